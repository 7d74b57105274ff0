"""Options of `framepack train` (FramePack LoRA / LoHa / LoKr training).

Every option of the reference trainer (musubi-tuner `fpack_train_network.py` and its shared
`setup_parser_common`, same names, defaults and choices) plus ours (`--dtype`, `--tokenizer1/2`). A
`--config_file` TOML is flattened into the options, the command line winning, as in the reference.
Cross-field rules run here, before any model loads, and name the flags in their messages. Options the
reference marks broken or without effect stay accepted (so existing command lines and configs keep working)
and say so in their help.
"""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import field_validator, model_validator

from framepack_cli.options.base import DECODE_HELP, OptionsBase, check_file, check_files, decode_conflict
from framepack_cli.options.cache import DTYPES, check_dataset_config, check_vae_dtype
from framepack_cli.options.generate import FOUND, F, models_dir_field

MODEL = "Model"
DATASET = "Dataset"
ATTENTION = "Attention"
TRAINING = "Training"
OPTIMIZER = "Optimizer"
SCHEDULER = "Scheduler"
TIMESTEPS = "Timesteps"
NETWORK = "Network"
MEMORY = "Memory"
SAVING = "Saving"
SAMPLING = "Sampling"
LOGGING = "Logging"
HUB = "Hub"

TRAIN_NEEDS = "unless in --config_file or with --show_timesteps"  # how the options required to train are marked
MAX_BLOCKS_TO_SWAP = 36  # the reference's documented maximum for training (38 for inference)
ATTENTION_FLAGS = ("sdpa", "flash_attn", "sage_attn", "xformers", "flash3")
FRAMEPACK_NETWORK_MODULES = ("networks.lora_framepack", "networks.loha", "networks.lokr")
DEFAULT_NETWORK_MODULE = "networks.lora_framepack"

TIMESTEP_SAMPLING = Literal[
    "sigma", "uniform", "sigmoid", "shift", "flux_shift", "flux2_shift", "ideogram4_shift", "qwen_shift",
    "krea2_shift", "logsnr", "qinglong_flux", "qinglong_qwen",
]
LR_SCHEDULERS = Literal[
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial", "inverse_sqrt",
    "cosine_with_min_lr", "warmup_stable_decay", "piecewise_constant", "rex", "adafactor",
]
DYNAMO_BACKENDS = Literal[
    "NO", "EAGER", "AOT_EAGER", "INDUCTOR", "AOT_TS_NVFUSER", "NVPRIMS_NVFUSER", "CUDAGRAPHS", "OFI", "FX2TRT",
    "ONNXRT", "TENSORRT", "AOT_TORCHXLA_TRACE_ONCE", "TORCHXLA_TRACE_ONCE", "IPEX", "TVM", "HPU_BACKEND", "NEURON",
]  # accelerate's DynamoBackend values (IPEX in older releases, NEURON in newer ones)

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_KEY = re.compile(r"^[A-Za-z_]\w*$")


# --------------------------------------------------------------------------------------------------------------
# Pure parsers (also used by the engine)


def parse_steps_or_ratio(text: str, flag: str) -> int | float:
    """`--lr_warmup_steps` / `--lr_decay_steps`: an integer step count, a ratio below 1, or a percentage.

    Integral values >= 1 are steps (`100`, `100.0`); `0.1` and `10%` are ratios of the total steps (the
    reference's rule).

    Raises:
        ValueError: naming the flag and the value.
    """
    t = str(text).strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"{flag}: expected a step count (100), a ratio (0.1) or a percentage (10%), got {text!r}") \
            from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{flag}: must be a finite number >= 0, got {text!r}")
    if not t.endswith("%") and value >= 1:
        if value != int(value):
            raise ValueError(f"{flag}: a step count must be a whole number and a ratio must be below 1, got {text!r}")
        return int(value)
    if value >= 1:
        raise ValueError(f"{flag}: a percentage must be below 100%, got {text!r}")
    return 0 if value == 0 else value


def parse_kwargs(items: list[str] | None, flag: str, literal: bool) -> dict[str, Any]:
    """`key=value` items into a dict; with `literal`, values are Python literals (`betas=(0.9,0.99)`), as the
    reference parses `--optimizer_args` and `--lr_scheduler_args`; otherwise they stay strings (`--network_args`).

    Raises:
        ValueError: one message listing every bad item, naming the flag.
    """
    out: dict[str, Any] = {}
    bad: list[str] = []
    for item in items or []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not _KEY.match(key):
            bad.append(f"{item!r} is not key=value")
            continue
        if literal:
            try:
                out[key] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                bad.append(f"value of {key!r} is not a Python literal: {value!r} (quote strings: {key}='{value}')")
                continue
        else:
            out[key] = value.strip()
    if bad:
        raise ValueError(f"{flag}: " + "; ".join(bad))
    return out


def load_config_file(path: str, known: set[str], list_fields: set[str]) -> dict[str, Any]:
    """Read a `--config_file` TOML the reference's way: `.toml` appended when missing, top-level keys and the
    keys of every table flattened into one namespace (table names ignored).

    Raises:
        ValueError: missing file, bad TOML, or unknown keys (all of them), naming `--config_file`.
    """
    p = Path(path)
    if p.suffix.lower() != ".toml":
        p = p.with_name(p.name + ".toml")
    if not p.is_file():
        raise ValueError(f"--config_file: file not found: {p}")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ValueError("--config_file: reading TOML on Python 3.10 needs the 'tomli' package "
                             "(pip install tomli)") from None
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--config_file: {p} is not valid TOML ({e})") from None
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            for sub_key, sub_value in value.items():
                flat[sub_key] = sub_value
        else:
            flat[key] = value
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in flat.items():
        name = key.replace("-", "_")
        if name not in known or name == "config_file" or isinstance(value, dict):
            unknown.append(key)
            continue
        if name in list_fields and not isinstance(value, list):
            value = [value]
        out[name] = value
    if unknown:
        raise ValueError(f"--config_file: unknown option(s) in {p}: {', '.join(sorted(unknown))}")
    return out


def _is_list(annotation: Any) -> bool:
    return any(get_origin(a) is list for a in (annotation, *get_args(annotation)))


# --------------------------------------------------------------------------------------------------------------


class TrainOptions(OptionsBase):
    """Train a LoRA (or LoHa/LoKr) on a FramePack DiT from latent and text caches."""

    # --- model
    config_file: str | None = F(None, "TOML file with any of these options (tables are flattened, '.toml' is "
                                "appended when missing); the command line overrides it.", panel=MODEL)
    dit: str | None = F(None, "DiT weights: single file, first shard of a sharded set, or directory. "
                        "Use the F1 DiT for caches made with --f1 (--f1 picks the downloaded one)." + FOUND,
                        panel=MODEL)
    models_dir: str | None = models_dir_field(MODEL)
    dtype: DTYPES = F("auto", "DiT dtype: auto = bfloat16 on CUDA (the reference's fixed choice), float32 on CPU. "
                      "The LoRA itself always trains in float32.", panel=MODEL)
    vae: str | None = F(None, "VAE weights: needed only for --sample_prompts (its name also goes into the "
                        "metadata).", panel=MODEL)
    vae_dtype: str | None = F(None, "Accepted only as 'float16' for compatibility: FramePack's VAE always runs in "
                              "float16.", panel=MODEL)
    text_encoder1: str | None = F(None, "LLaMA text encoder: needed only for --sample_prompts.", panel=MODEL)
    text_encoder2: str | None = F(None, "CLIP-L text encoder: needed only for --sample_prompts.", panel=MODEL)
    image_encoder: str | None = F(None, "SigLIP image encoder: needed only for --sample_prompts.",
                                  panel=MODEL)
    tokenizer1: str | None = F(None, "LLaMA tokenizer directory (default: tokenizer/ beside the weights, then the "
                               "HF cache).", panel=MODEL)
    tokenizer2: str | None = F(None, "CLIP tokenizer directory (default: tokenizer_2/ beside the weights, then the "
                               "HF cache).", panel=MODEL)
    fp8_llm: bool = F(False, "Store the LLaMA text encoder in fp8 while encoding sample prompts.", panel=MODEL)
    disable_numpy_memmap: bool = F(False, "Read safetensors without memory mapping (more RAM, sometimes faster).",
                                   panel=MODEL)

    # --- dataset
    dataset_config: str | None = F(None, "Dataset config (.toml or .json) whose cache directories hold the "
                                   "latent and text caches.", panel=DATASET, required=TRAIN_NEEDS)
    max_data_loader_n_workers: int = F(8, "DataLoader workers (capped at the CPU count).", panel=DATASET, ge=0)
    persistent_data_loader_workers: bool = F(False, "Keep DataLoader workers alive between epochs.", panel=DATASET)

    # --- attention and compile
    sdpa: bool = F(False, "PyTorch scaled-dot-product attention (the default: the reference requires one "
                   "attention flag, framepack uses SDPA when none is given).", panel=ATTENTION)
    flash_attn: bool = F(False, "FlashAttention 2.", panel=ATTENTION)
    sage_attn: bool = F(False, "SageAttention: refused for training (no backward pass), as in the reference; "
                        "accepted for inference only.", panel=ATTENTION)
    xformers: bool = F(False, "xformers memory-efficient attention.", panel=ATTENTION)
    flash3: bool = F(False, "FlashAttention 3 (Hopper GPUs; the `flash_attn_interface` package).", panel=ATTENTION)
    split_attn: bool = F(False, "Attend each sample of a batch separately (less attention memory, same result). "
                         "Not needed for batches above 1: framepack's DiT always attends samples with different "
                         "text lengths separately.", panel=ATTENTION)
    compile: bool = F(False, "torch.compile every DiT block (with the LoRA modules). Without a working compiler: "
                      "one warning, then the plain (eager) blocks.", panel=ATTENTION)
    compile_backend: str = F("inductor", "torch.compile backend.", panel=ATTENTION)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = F(
        "default", "torch.compile mode.", panel=ATTENTION)
    compile_dynamic: Literal["true", "false", "auto"] | None = F(None, "torch.compile dynamic shapes (auto = let "
                                                                  "torch decide).", panel=ATTENTION)
    compile_fullgraph: bool = F(False, "torch.compile fullgraph.", panel=ATTENTION)
    compile_cache_size_limit: int | None = F(None, "torch._dynamo cache size limit.", panel=ATTENTION, ge=1)
    cuda_allow_tf32: bool = F(False, "Allow TF32 matmul and cuDNN on CUDA.", panel=ATTENTION)
    cuda_cudnn_benchmark: bool = F(False, "Enable cuDNN benchmark mode.", panel=ATTENTION)
    dynamo_backend: DYNAMO_BACKENDS = F(
        "NO", "TorchDynamo backend (accelerate's names; NO = off): each DiT block is compiled with it, as --compile "
        "does (so block swap and gradient checkpointing keep working), with --dynamo_mode / _fullgraph / _dynamic.",
        panel=ATTENTION)
    dynamo_mode: Literal["default", "reduce-overhead", "max-autotune"] | None = F(
        None, "TorchDynamo mode (with --dynamo_backend).", panel=ATTENTION)
    dynamo_fullgraph: bool = F(False, "TorchDynamo fullgraph (with --dynamo_backend).", panel=ATTENTION)
    dynamo_dynamic: bool = F(False, "TorchDynamo dynamic shapes (with --dynamo_backend; default: automatic).",
                             panel=ATTENTION)

    # --- training
    max_train_steps: int = F(1600, "Optimizer steps to train (ignored when --max_train_epochs is given).",
                             panel=TRAINING, ge=1)
    max_train_epochs: int | None = F(None, "Epochs to train; overrides --max_train_steps.", panel=TRAINING, ge=1)
    seed: int | None = F(None, "Seed of python, numpy and torch (random when absent, saved in the metadata).",
                         panel=TRAINING, ge=0, lt=2**32)
    gradient_checkpointing: bool = F(False, "Recompute DiT activations in backward (much less memory).",
                                     panel=TRAINING)
    gradient_checkpointing_cpu_offload: bool = F(False, "Keep checkpointed activations in CPU memory (needs "
                                                 "--gradient_checkpointing; less VRAM, slower).", panel=TRAINING)
    gradient_accumulation_steps: int = F(1, "Micro-batches accumulated per optimizer step.", panel=TRAINING, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16"] | None = F(
        None, "Autocast precision (default: the accelerate config); bf16 is what the docs use.", panel=TRAINING)
    full_bf16: bool = F(False, "Keep the network's weights and optimizer state in bfloat16 (half the memory of "
                        "float32; needs --mixed_precision bf16). The reference always trains the network in "
                        "float32.", panel=TRAINING)
    guidance_scale: float = F(1.0, "Embedded (distilled) guidance fed to the DiT during training, x1000. The "
                              "reference trains at 1.0 although sampling uses 10.0; kept for parity.",
                              panel=TRAINING)
    ddp_timeout: int | None = F(None, "Multi-GPU process-group timeout in minutes.", panel=TRAINING, ge=1)
    ddp_gradient_as_bucket_view: bool = F(False, "DDP gradient_as_bucket_view.", panel=TRAINING)
    ddp_static_graph: bool = F(False, "DDP static_graph.", panel=TRAINING)

    # --- optimizer
    optimizer_type: str = F("AdamW", "AdamW, AdamW8bit, Adafactor, any torch.optim class, or a full path like "
                            "prodigyopt.Prodigy. (The reference's empty default crashes although its help says "
                            "AdamW; framepack defaults to AdamW.)", panel=OPTIMIZER)
    optimizer_args: list[str] | None = F(None, "Optimizer keyword arguments as key=value, values Python literals: "
                                         "weight_decay=0.01 betas=(0.9,0.99).", variadic=True, panel=OPTIMIZER)
    learning_rate: float = F(2e-6, "Learning rate (the docs' FramePack example uses 2e-4).", panel=OPTIMIZER, gt=0)
    max_grad_norm: float = F(1.0, "Gradient clipping norm over the network parameters (0 = no clipping).",
                             panel=OPTIMIZER, ge=0)

    # --- scheduler
    lr_scheduler: LR_SCHEDULERS = F("constant", "Learning-rate schedule (adafactor needs --optimizer_type "
                                    "Adafactor).", panel=SCHEDULER)
    lr_warmup_steps: str = F("0", "Warmup: steps (100), a ratio of the total (0.1) or a percentage (10%).",
                             panel=SCHEDULER)
    lr_decay_steps: str = F("0", "Decay steps for warmup_stable_decay: steps, ratio or percentage.", panel=SCHEDULER)
    lr_scheduler_num_cycles: int = F(1, "Cycles of cosine_with_restarts (half-cycles for cosine_with_min_lr and "
                                     "warmup_stable_decay).", panel=SCHEDULER, ge=1)
    lr_scheduler_power: float = F(1.0, "Power of the polynomial schedule.", panel=SCHEDULER)
    lr_scheduler_timescale: int | None = F(None, "Timescale of inverse_sqrt (default: the warmup steps).",
                                           panel=SCHEDULER, ge=1)
    lr_scheduler_min_lr_ratio: float | None = F(None, "Minimum lr as a ratio of --learning_rate (cosine_with_min_lr "
                                                "needs it; warmup_stable_decay and rex use it).", panel=SCHEDULER,
                                                ge=0, le=1)
    lr_scheduler_type: str = F("", "Custom scheduler class (torch.optim.lr_scheduler name or module.Class); "
                               "replaces --lr_scheduler and gets only --lr_scheduler_args.", panel=SCHEDULER)
    lr_scheduler_args: list[str] | None = F(None, "Scheduler keyword arguments as key=value (Python literals).",
                                            variadic=True, panel=SCHEDULER)

    # --- timesteps and loss
    timestep_sampling: TIMESTEP_SAMPLING = F(
        "sigma", "How training timesteps are drawn (the docs' FramePack example uses shift).", panel=TIMESTEPS)
    discrete_flow_shift: float = F(1.0, "Shift of --timestep_sampling shift, and of the 'sigma' schedule: there "
                                   "values other than 1 shift it to k*s/(1+(k-1)*s) (the reference ignores the "
                                   "flag in 'sigma' mode; 1 trains exactly as it does).", panel=TIMESTEPS, gt=0)
    sigmoid_scale: float = F(1.0, "Scale of the normal sample before the sigmoid (sigmoid/shift/flux modes).",
                             panel=TIMESTEPS, gt=0)
    weighting_scheme: Literal["logit_normal", "mode", "cosmap", "sigma_sqrt", "none"] = F(
        "none", "Loss weighting (sigma_sqrt, cosmap) or timestep density in sigma mode (logit_normal, mode).",
        panel=TIMESTEPS)
    logit_mean: float = F(0.0, "Mean for logit_normal weighting and logsnr sampling.", panel=TIMESTEPS)
    logit_std: float = F(1.0, "Standard deviation for logit_normal weighting and logsnr sampling.",
                         panel=TIMESTEPS, gt=0)
    mode_scale: float = F(1.29, "Scale of the 'mode' weighting scheme.", panel=TIMESTEPS)
    min_timestep: int | None = F(None, "Lowest timestep, 0-999 (default 0). In 'sigma' mode it bounds the schedule "
                                 "index, so --min_timestep 500 trains the low-noise half (as the reference).",
                                 panel=TIMESTEPS, ge=0, le=999)
    max_timestep: int | None = F(None, "Highest timestep, 1-1000 (default 1000); must exceed --min_timestep.",
                                 panel=TIMESTEPS, ge=1, le=1000)
    preserve_distribution_shape: bool = F(False, "Restrict timesteps by rejection sampling instead of rescaling.",
                                          panel=TIMESTEPS)
    num_timestep_buckets: int | None = F(None, "Stratify timesteps over this many equal intervals (>= 2).",
                                         panel=TIMESTEPS, ge=2)
    show_timesteps: Literal["image", "console"] | None = F(
        None, "Show the timestep and loss-weight distributions, then exit without training.", panel=TIMESTEPS)

    # --- network
    network_module: Literal["networks.lora_framepack", "networks.loha", "networks.lokr"] | None = F(
        None, "Network type: networks.lora_framepack (LoRA, the default), networks.loha, networks.lokr.",
        panel=NETWORK)
    network_dim: int | None = F(None, "Rank (default 4).", panel=NETWORK, ge=1)
    network_alpha: float = F(1.0, "Alpha; the update is scaled by alpha/rank (0 means alpha = rank).",
                             panel=NETWORK, ge=0)
    network_dropout: float | None = F(None, "Neuron dropout probability (LoRA only; LoHa/LoKr ignore it).",
                                      panel=NETWORK, ge=0, lt=1)
    network_args: list[str] | None = F(None, "Network arguments as key=value: exclude_patterns=[...], "
                                       "include_patterns=[...], rank_dropout=0.1, module_dropout=0.1, "
                                       "loraplus_lr_ratio=4, factor=8 (LoKr), verbose=True.", variadic=True,
                                       panel=NETWORK)
    network_weights: str | None = F(None, "Start from these network weights (a LoRA / LoHa / LoKr of the same "
                                    "type and ranks). The file's alpha sets the scale (the reference kept "
                                    "--network_alpha's).", panel=NETWORK)
    dim_from_weights: bool = F(False, "Take ranks and alphas from --network_weights (broken in the reference; "
                               "works here).", panel=NETWORK)
    scale_weight_norms: float | None = F(None, "Max-norm regularisation of each LoRA update (1 suggested); no "
                                         "effect on LoHa/LoKr.", panel=NETWORK, gt=0)
    base_weights: list[str] | None = F(None, "LoRA files merged into the DiT before training.", variadic=True,
                                       panel=NETWORK)
    base_weights_multiplier: list[float] | None = F(None, "Multipliers of --base_weights, in order; missing ones "
                                                    "are 1.0.", variadic=True, panel=NETWORK)
    training_comment: str | None = F(None, "Comment stored in the metadata.", panel=NETWORK)

    # --- memory
    fp8_base: bool = F(False, "Store the frozen DiT's block Linears in fp8 (float8_e4m3fn), upcast per matmul; the "
                       "LoRA trains in float32.", panel=MEMORY)
    fp8_scaled: bool = F(False, "Block-scaled fp8 DiT weights (better quality; needs --fp8_base).", panel=MEMORY)
    blocks_to_swap: int | None = F(None, f"DiT blocks kept in CPU memory and swapped in (0-{MAX_BLOCKS_TO_SWAP}).",
                                   panel=MEMORY, ge=0, le=MAX_BLOCKS_TO_SWAP)
    use_pinned_memory_for_block_swap: bool = F(False, "Page-locked host buffers for --blocks_to_swap (faster "
                                               "copies, uses that much non-pageable RAM).", panel=MEMORY)
    block_swap_h2d_only: bool = F(False, "Block swap with evenly spaced streamed blocks copied host-to-device "
                                  "into a GPU ring buffer per block list, kept until their slot is needed (needs "
                                  "--blocks_to_swap and --gradient_checkpointing).", panel=MEMORY)
    block_swap_ring_size: int = F(2, "Slots of the --block_swap_h2d_only ring buffer.", panel=MEMORY, ge=1)
    img_in_txt_in_offloading: bool = F(False, "HunyuanVideo only: no effect on FramePack (accepted for "
                                       "compatibility).", panel=MEMORY)

    # --- saving
    output_dir: str | None = F(None, "Directory of the saved network, states and samples.", panel=SAVING,
                               required=TRAIN_NEEDS)
    output_name: str | None = F(None, "Base name of the saved files.", panel=SAVING, required=TRAIN_NEEDS)
    save_precision: Literal["float", "fp32", "fp16", "bf16"] | None = F(
        None, "dtype of the saved weights (default: float32).", panel=SAVING)
    save_every_n_epochs: int | None = F(None, "Save a checkpoint every N epochs (not after the last one: the "
                                        "final file replaces it).", panel=SAVING, ge=1)
    save_every_n_steps: int | None = F(None, "Save a checkpoint every N optimizer steps.", panel=SAVING, ge=1)
    save_last_n_epochs: int | None = F(None, "Keep only the last N epoch checkpoints.", panel=SAVING, ge=1)
    save_last_n_epochs_state: int | None = F(None, "Keep only the last N epoch states (default: "
                                             "--save_last_n_epochs).", panel=SAVING, ge=1)
    save_last_n_steps: int | None = F(None, "Delete step checkpoints older than N steps.", panel=SAVING, ge=1)
    save_last_n_steps_state: int | None = F(None, "Delete step states older than N steps (default: "
                                            "--save_last_n_steps).", panel=SAVING, ge=1)
    save_state: bool = F(False, "Also save optimizer/scheduler/RNG states with each checkpoint.", panel=SAVING)
    save_state_on_train_end: bool = F(False, "Save the state once at the end of training.", panel=SAVING)
    resume: str | None = F(None, "Resume from a state folder written with --save_state (or the --output_dir "
                           "holding them: the newest is used). Step, epoch, data order, RNG, optimizer and "
                           "scheduler continue where they were (the reference restarted its counters).",
                           panel=SAVING)
    no_metadata: bool = F(False, "Store only the minimal network metadata.", panel=SAVING)
    metadata_title: str | None = F(None, "ModelSpec title (default: --output_name).", panel=SAVING)
    metadata_author: str | None = F(None, "ModelSpec author.", panel=SAVING)
    metadata_description: str | None = F(None, "ModelSpec description.", panel=SAVING)
    metadata_license: str | None = F(None, "ModelSpec license.", panel=SAVING)
    metadata_tags: str | None = F(None, "ModelSpec tags (comma-separated).", panel=SAVING)
    metadata_reso: str | None = F(None, "ModelSpec resolution: 'W,H' or one value (default 1280x720).",
                                  panel=SAVING)
    metadata_arch: str | None = F(None, "ModelSpec architecture (default: framepack; '/lora' is appended).",
                                  panel=SAVING)

    # --- sampling
    sample_prompts: str | None = F(None, "Prompt file (.txt, .toml or .json) for samples during training; needs "
                                   "--vae, --text_encoder1, --text_encoder2 and --image_encoder.", panel=SAMPLING)
    sample_every_n_steps: int | None = F(None, "Sample every N optimizer steps.", panel=SAMPLING, ge=1)
    sample_every_n_epochs: int | None = F(None, "Sample at the end of every N-th epoch.", panel=SAMPLING, ge=1)
    sample_at_first: bool = F(False, "Sample once before training.", panel=SAMPLING)
    f1: bool = F(False, "Generate samples with F1 forward sampling (training itself follows the caches).",
                 panel=SAMPLING)
    one_frame: bool = F(False, "Generate one-frame samples (every prompt needs --of; training itself follows the "
                        "caches).", panel=SAMPLING)
    latent_window_size: int = F(9, "Latent window of sample generation (must match the caches).", panel=SAMPLING,
                                ge=1)
    bulk_decode: bool = F(False, "Decode all sample frames at once (faster, more memory); same as --decode bulk.",
                          panel=SAMPLING)
    decode: Literal["stream", "blend", "bulk"] | None = F(None, "Samples: " + DECODE_HELP, panel=SAMPLING)
    vae_tiling: bool = F(False, "Spatial VAE tiling for samples.", panel=SAMPLING)
    vae_chunk_size: int | None = F(None, "Chunk the VAE's causal convolutions along width for samples.",
                                   panel=SAMPLING, ge=1)
    vae_spatial_tile_sample_min_size: int | None = F(None, "VAE tile size in pixels for samples (turns tiling on).",
                                                     panel=SAMPLING, ge=8)

    # --- logging
    logging_dir: str | None = F(None, "Write logs under DIR/<log_prefix><timestamp> (tensorboard by default).",
                                panel=LOGGING)
    log_with: Literal["tensorboard", "wandb", "all"] | None = F(
        None, "Logger (tensorboard and all need --logging_dir).", panel=LOGGING)
    log_prefix: str | None = F(None, "Prefix of the timestamped log directory.", panel=LOGGING)
    log_tracker_name: str | None = F(None, "Tracker project name (default: network_train).", panel=LOGGING)
    log_tracker_config: str | None = F(None, "TOML file of tracker init arguments.", panel=LOGGING)
    log_config: bool = F(False, "Log the options (without keys, tokens and paths) as the run config.",
                         panel=LOGGING)
    wandb_run_name: str | None = F(None, "wandb run name.", panel=LOGGING)
    wandb_api_key: str | None = F(None, "wandb API key (logs in before training).", panel=LOGGING)

    # --- hub
    huggingface_repo_id: str | None = F(None, "Upload saved files to this Hugging Face repository.", panel=HUB,
        unbuilt=True)
    huggingface_repo_type: Literal["model", "dataset", "space"] | None = F(None, "Repository type.", panel=HUB)
    huggingface_path_in_repo: str | None = F(None, "Folder inside the repository.", panel=HUB)
    huggingface_token: str | None = F(None, "Hugging Face token.", panel=HUB)
    huggingface_repo_visibility: Literal["public", "private"] | None = F(
        None, "Visibility of a created repository (default: private).", panel=HUB)
    save_state_to_huggingface: bool = F(False, "Upload saved states too.", panel=HUB)
    resume_from_huggingface: bool = F(False, "--resume names REPO_ID/PATH[:REVISION[:REPO_TYPE]] on the Hub.",
                                      panel=HUB, unbuilt=True)
    async_upload: bool = F(False, "Upload in a background thread (the final save waits).", panel=HUB)

    # ---------------------------------------------------------------------------------------------------------
    @model_validator(mode="before")
    @classmethod
    def _config_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("config_file") is None:
            return data
        list_fields = {n for n, f in cls.model_fields.items() if _is_list(f.annotation)}
        from_file = load_config_file(str(data["config_file"]), set(cls.model_fields), list_fields)
        return {**from_file, **data}  # the command line wins

    @classmethod
    def model_flags(cls, given: dict) -> tuple[str, ...]:
        """The models model resolution fills (`cli.models`): the DiT, and the sampling models with
        --sample_prompts; none with --show_timesteps. Values from --config_file count as given.

        Raises:
            ValueError: the --config_file cannot be read (validation reports it).
        """
        if given.get("config_file") is not None:
            list_fields = {n for n, f in cls.model_fields.items() if _is_list(f.annotation)}
            given = {**load_config_file(str(given["config_file"]), set(cls.model_fields), list_fields), **given}
        if given.get("show_timesteps") is not None:
            return ()
        flags = ["--dit"]
        if given.get("sample_prompts") is not None:
            flags += ["--vae", "--text_encoder1", "--text_encoder2", "--image_encoder"]
        return tuple(f for f in flags if given.get(f[2:]) is None)

    @field_validator("lr_warmup_steps", "lr_decay_steps", mode="before")
    @classmethod
    def _steps(cls, v: Any, info) -> str:
        text = str(v)
        parse_steps_or_ratio(text, f"--{info.field_name}")
        return text

    @field_validator("vae_dtype")
    @classmethod
    def _vae_dtype(cls, v: str | None) -> str | None:
        return check_vae_dtype(v)

    @field_validator("optimizer_type")
    @classmethod
    def _optimizer(cls, v: str) -> str:
        if v.strip() and not _DOTTED.match(v):  # empty = AdamW (the reference's empty default crashes)
            raise ValueError("expected an optimizer name like AdamW8bit or a class path like prodigyopt.Prodigy")
        return v

    @field_validator("lr_scheduler_type")
    @classmethod
    def _scheduler_type(cls, v: str) -> str:
        if v and not _DOTTED.match(v):
            raise ValueError("expected a scheduler class like CosineAnnealingLR or module.Class")
        return v

    @field_validator("optimizer_args", "lr_scheduler_args", "network_args")
    @classmethod
    def _kwargs(cls, v: list[str] | None, info) -> list[str] | None:
        parse_kwargs(v, f"--{info.field_name}", literal=info.field_name != "network_args")
        return v

    @field_validator("metadata_reso")
    @classmethod
    def _reso(cls, v: str | None) -> str | None:
        if v is not None:
            parts = [p.strip() for p in v.split(",")]
            if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
                raise ValueError("expected 'W,H' or one positive integer")
        return v

    @model_validator(mode="after")
    def _cross(self):
        errors = _cross_checks(self)
        if errors:
            raise ValueError("\n".join(errors))
        return self

    # --- derived values the engine reads
    @property
    def network_module_name(self) -> str:
        return self.network_module or DEFAULT_NETWORK_MODULE

    @property
    def attention(self) -> str | None:
        """The one attention backend flag given (`sdpa`, `flash_attn`, `xformers`, `flash3`)."""
        return next((n for n in ATTENTION_FLAGS if getattr(self, n)), None)

    @property
    def lr_warmup(self) -> int | float:
        return parse_steps_or_ratio(self.lr_warmup_steps, "--lr_warmup_steps")

    @property
    def lr_decay(self) -> int | float:
        return parse_steps_or_ratio(self.lr_decay_steps, "--lr_decay_steps")

    @property
    def optimizer_kwargs(self) -> dict[str, Any]:
        return parse_kwargs(self.optimizer_args, "--optimizer_args", literal=True)

    @property
    def lr_scheduler_kwargs(self) -> dict[str, Any]:
        return parse_kwargs(self.lr_scheduler_args, "--lr_scheduler_args", literal=True)

    @property
    def network_kwargs(self) -> dict[str, str]:
        return parse_kwargs(self.network_args, "--network_args", literal=False)

    @property
    def base_multipliers(self) -> list[float]:
        """One multiplier per --base_weights file (missing ones are 1.0)."""
        given = list(self.base_weights_multiplier or [])
        return given + [1.0] * (len(self.base_weights or []) - len(given))


def _cross_checks(o: TrainOptions) -> list[str]:
    """All cross-field problems at once, each naming its flags."""
    errs: list[str] = []
    showing = o.show_timesteps is not None  # shows distributions and exits: needs no data, model or output
    if not showing:
        for name in ("dataset_config", "dit", "output_dir", "output_name"):
            if getattr(o, name) is None:
                errs.append(f"--{name}: required to train (or give it in --config_file)")
    errs += check_dataset_config(o.dataset_config)
    if o.compile and o.dynamo_backend != "NO":
        errs.append(f"--compile and --dynamo_backend {o.dynamo_backend} both compile the DiT blocks; give one of them")
    for name in ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder", "tokenizer1", "tokenizer2",
                 "network_weights", "sample_prompts", "log_tracker_config"):
        try:
            check_file(getattr(o, name), f"--{name}")
        except ValueError as e:
            errs.append(str(e))
    try:
        check_files(o.base_weights, "--base_weights")
    except ValueError as e:
        errs.append(str(e))

    # attention
    given = [n for n in ATTENTION_FLAGS if getattr(o, n)]
    if o.sage_attn:
        errs.append("--sage_attn cannot be used for training (SageAttention has no backward pass; the reference "
                    "refuses it too); use --sdpa, --flash_attn, --xformers or --flash3")
    elif len(given) > 1:
        errs.append(f"{' and '.join('--' + n for n in given)}: give exactly one attention backend")

    if o.full_bf16 and o.mixed_precision not in (None, "bf16"):
        errs.append(f"--full_bf16 needs --mixed_precision bf16 (got {o.mixed_precision})")

    if (conflict := decode_conflict(o.decode, o.bulk_decode)) is not None:
        errs.append(conflict)

    # memory
    if o.fp8_scaled and not o.fp8_base:
        errs.append("--fp8_scaled needs --fp8_base")
    if o.gradient_checkpointing_cpu_offload and not o.gradient_checkpointing:
        errs.append("--gradient_checkpointing_cpu_offload needs --gradient_checkpointing")
    if o.block_swap_h2d_only and not o.gradient_checkpointing:
        errs.append("--block_swap_h2d_only needs --gradient_checkpointing")
    if o.block_swap_h2d_only and not o.blocks_to_swap:
        errs.append("--block_swap_h2d_only needs --blocks_to_swap (there is nothing to swap)")

    # timesteps
    lo = 0 if o.min_timestep is None else o.min_timestep
    hi = 1000 if o.max_timestep is None else o.max_timestep
    if hi <= lo:
        errs.append(f"--max_timestep ({hi}) must be greater than --min_timestep ({lo})")

    # optimizer / scheduler
    if not o.lr_scheduler_type:
        try:
            warmup = o.lr_warmup
        except ValueError:
            warmup = 0  # reported by the field validator
        if o.lr_scheduler == "constant" and warmup:
            errs.append("--lr_warmup_steps: the constant scheduler takes no warmup; use --lr_scheduler "
                        "constant_with_warmup")
        if o.lr_scheduler == "cosine_with_min_lr" and o.lr_scheduler_min_lr_ratio is None:
            errs.append("--lr_scheduler_min_lr_ratio is required with --lr_scheduler cosine_with_min_lr")
        if o.lr_scheduler == "adafactor" and o.optimizer_type.lower() != "adafactor":
            errs.append("--lr_scheduler adafactor needs --optimizer_type Adafactor")

    # network
    n_base = len(o.base_weights or [])
    n_mult = len(o.base_weights_multiplier or [])
    if n_mult and not n_base:
        errs.append("--base_weights_multiplier given without --base_weights")
    elif n_mult > n_base:
        errs.append(f"--base_weights_multiplier: {n_mult} values for {n_base} --base_weights files "
                    "(at most one per file)")
    if o.dim_from_weights and o.network_weights is None:
        errs.append("--dim_from_weights needs --network_weights")

    # sampling
    if o.f1 and o.one_frame:
        errs.append("--f1 and --one_frame cannot be combined (they pick how samples are generated)")
    if o.sample_prompts is not None:
        if Path(o.sample_prompts).suffix.lower() not in (".txt", ".toml", ".json"):
            errs.append(f"--sample_prompts: expected a .txt, .toml or .json file, got {o.sample_prompts}")
        for name in ("vae", "text_encoder1", "text_encoder2", "image_encoder"):
            if getattr(o, name) is None:
                errs.append(f"--{name}: required with --sample_prompts (samples are generated during training)")
    else:
        asked = [n for n in ("sample_every_n_steps", "sample_every_n_epochs", "sample_at_first") if getattr(o, n)]
        if asked:
            verb = "needs" if len(asked) == 1 else "need"
            errs.append(f"{' / '.join('--' + n for n in asked)} {verb} --sample_prompts")

    # saving
    if o.save_last_n_epochs and not o.save_every_n_epochs:
        errs.append("--save_last_n_epochs needs --save_every_n_epochs")
    if o.save_last_n_steps and not o.save_every_n_steps:
        errs.append("--save_last_n_steps needs --save_every_n_steps")
    if o.resume_from_huggingface:
        if o.resume is None:
            errs.append("--resume_from_huggingface needs --resume REPO_ID/PATH[:REVISION[:REPO_TYPE]]")
        elif "/" not in o.resume:
            errs.append(f"--resume: expected REPO_ID/PATH[:REVISION[:REPO_TYPE]] with --resume_from_huggingface, "
                        f"got {o.resume}")
    else:
        try:
            check_file(o.resume, "--resume")
        except ValueError as e:
            errs.append(str(e))

    # logging / hub
    if o.log_with in ("tensorboard", "all") and o.logging_dir is None:
        errs.append(f"--log_with {o.log_with} needs --logging_dir")
    if o.huggingface_repo_id is None:
        for name in ("huggingface_path_in_repo", "huggingface_repo_visibility", "save_state_to_huggingface",
                     "async_upload"):
            if getattr(o, name):
                errs.append(f"--{name} needs --huggingface_repo_id")
    return errs
