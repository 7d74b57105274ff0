"""LoRA files for the FramePack DiT: every key layout in circulation in, every layout out, exact merging.

Layouts read (detected from key names, never from file names or flags):

* ``musubi-framepack``: musubi-tuner's own files, ``lora_unet_<module path with _>.lora_down.weight`` /
  ``.lora_up.weight`` / ``.alpha`` with FramePack (diffusers) module names.
* ``musubi-hunyuanvideo``: musubi's HunyuanVideo LoRAs, ``lora_unet_double_blocks_0_img_attn_qkv`` style.
* ``diffusers``: PEFT keys under ``transformer.`` (``.lora_A.weight`` / ``.lora_B.weight``, no alpha, scale 1;
  diffusers' ``lora_adapter_metadata`` alphas are honoured when present); ``peft`` is the same without a prefix.
* ``comfy``: ``diffusion_model.<FramePack module>.lora_A/lora_B`` (kijai's FramePack wrapper);
  ``comfy-hunyuanvideo``: ``diffusion_model.`` + HunyuanVideo names, both the original ones (``img_attn_qkv``,
  ``img_mod.linear``, ``img_mlp.fc1``) and ComfyUI's own (``img_attn.qkv``, ``img_mod.lin``, ``img_mlp.0``).
* ``diffusion-pipe-hunyuanvideo``: ``transformer.`` + original HunyuanVideo names.
* LyCORIS LoHa (``hada_w1_a``...) and LoKr (``lokr_w1``...) modules and full-delta ``.diff`` modules in any of
  the layouts above. They are detected and merged with their own formulas, so musubi's ``--lycoris`` flag is
  accepted but not needed.

HunyuanVideo names are mapped onto the FramePack modules like the reference generator does: fused ``qkv``
projections are split by rows into ``to_q/to_k/to_v`` (``add_*_proj`` for text), ``linear1`` of a single block
into ``to_q/to_k/to_v/proj_mlp`` (3·inner + mlp rows), ``lora_down`` and ``alpha`` being shared by the parts.
HunyuanVideo modules outside the double/single blocks have no FramePack counterpart and are reported unused.

Merging is static, done on a state dict before any fp8 quantisation: for every matched weight
``W += m · (alpha / rank) · up @ down``, computed in float32 (all LoRAs stacked before one cast back to the
weight's dtype). `plan_merge` validates everything (files, shapes, patterns) from shapes alone before any
weight is touched, so a bad LoRA fails in seconds instead of after loading 25 GB.

One concept per file: `names` (key naming), `modules` (what a file holds), `read` (every layout in),
`merge` (plan and apply), `merge_file` (a DiT file on disk), `save` (streamed atomic safetensors),
`convert` (every layout out), `describe` (`lora inspect`), `network` (the trainable LoRA network).
The names below are the public API.
"""

from framepack_cli.models.lora.convert import convert_lora, convert_lora_file
from framepack_cli.models.lora.describe import describe_lora
from framepack_cli.models.lora.merge import MergePlan, dit_inner_dim, merge_loras, plan_merge
from framepack_cli.models.lora.merge_file import merge_dit_file
from framepack_cli.models.lora.modules import LoraFile, LoraModule, LoraSpec
from framepack_cli.models.lora.names import NETWORK_LABELS, TARGETS, framepack_path, is_framepack_path, musubi_name
from framepack_cli.models.lora.network import LoraNetwork, training_metadata
from framepack_cli.models.lora.read import read_lora
from framepack_cli.models.lora.save import save_tensors, write_safetensors

__all__ = [
    "NETWORK_LABELS", "TARGETS", "LoraFile", "LoraModule", "LoraNetwork", "LoraSpec", "MergePlan", "convert_lora",
    "convert_lora_file", "describe_lora", "dit_inner_dim", "framepack_path", "is_framepack_path", "merge_dit_file",
    "merge_loras", "musubi_name", "plan_merge", "read_lora", "save_tensors", "training_metadata",
    "write_safetensors",
]
