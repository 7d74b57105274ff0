"""Where each FramePack model lives on the Hugging Face Hub: the one table `framepack download` fetches from and
model resolution (`framepack_cli.models.store`) reads back.

Pure data (standard library only): options validate `--components` / `--variant` / `--dit_format` with it, the
downloader asks the hub for the sizes and hashes of the files it names (no size is written here: the hub says).

Repositories and file names are those of ../shared/reference/inference.md: lllyasviel's sharded DiTs
(`FramePackI2V_HY`, `FramePack_F1_I2V_HY_20250503`), hunyuanvideo-community/HunyuanVideo for the VAE, the text
encoders and the tokenizers, lllyasviel/flux_redux_bfl for SigLIP; Kijai's single-file DiT and the Comfy-Org single
files are alternatives (resolution finds them too; `--dit_format single|fp8` downloads Kijai's).

Layout on disk: the Hugging Face hub cache layout (`<dir>/models--<owner>--<name>/snapshots/<commit>/<file>`,
`refs/<revision>`), the same under `--models_dir`, `$FRAMEPACK_HOME/models` and the HF cache, so one reader serves
all three and files already in the HF cache are never fetched twice by tools sharing it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

REVISION = "main"

HUNYUAN = "hunyuanvideo-community/HunyuanVideo"
FRAMEPACK_REPO = "lllyasviel/FramePackI2V_HY"
F1_REPO = "lllyasviel/FramePack_F1_I2V_HY_20250503"
REDUX_REPO = "lllyasviel/flux_redux_bfl"
KIJAI_REPO = "Kijai/HunyuanVideo_comfy"
COMFY_HV_REPO = "Comfy-Org/HunyuanVideo_repackaged"
COMFY_SIGLIP_REPO = "Comfy-Org/sigclip_vision_384"


@dataclass(frozen=True)
class Source:
    """One way a model is published.

    Attributes:
        repo: Hugging Face model repository.
        files: the repository paths to fetch, as fnmatch patterns (`*` does not cross `/`), matched against the
            hub's file list.
        entry: the file the model flag gets (a pattern; the first match in sorted order): the first shard of a
            sharded set, else the single file.
        index: shard index json whose `weight_map` names every shard (all must be present to count as found).
        revision: branch, tag or commit.
        label: short name for messages (`sharded`, `single`, `fp8`, `comfy`).
    """

    repo: str
    files: tuple[str, ...]
    entry: str
    index: str | None = None
    revision: str = REVISION
    label: str = "default"

    def wants(self, path: str) -> bool:
        """Does `path` (a repository path) belong to this source?"""
        return any(path_matches(path, p) for p in self.files)


def path_matches(path: str, pattern: str) -> bool:
    """fnmatch where `*` stays within one folder level (`tokenizer/*` is not `tokenizer/x/y`)."""
    return path.count("/") == pattern.count("/") and fnmatch.fnmatchcase(path, pattern)


@dataclass(frozen=True)
class Component:
    """A model framepack needs.

    Attributes:
        name: the `--components` name (`dit`, `vae`, ...); the F1 DiT is `dit-f1`.
        flag: the option that takes it (None for the tokenizers, found beside the text encoders).
        kind: what `models.detect.detect_kind` says of the entry file (None for the tokenizers).
        sources: where it is published, the one `framepack download` fetches first; resolution accepts any.
        what: a few words for messages.
    """

    name: str
    flag: str | None
    kind: str | None
    sources: tuple[Source, ...]
    what: str


def _dit_sharded(repo: str) -> Source:
    return Source(repo, ("config.json", "diffusion_pytorch_model.safetensors.index.json",
                         "diffusion_pytorch_model-*-of-*.safetensors"),
                  entry="diffusion_pytorch_model-*-of-*.safetensors",
                  index="diffusion_pytorch_model.safetensors.index.json", label="sharded")


DIT_FORMATS = ("sharded", "single", "fp8")
VARIANTS = ("framepack", "f1", "both")

# DiT sources per variant and --dit_format. There is no single-file F1 DiT in a repository named by the reference
# (Kijai's repo has none); `dit_source` says so.
DIT_SOURCES: dict[str, dict[str, Source]] = {
    "framepack": {
        "sharded": _dit_sharded(FRAMEPACK_REPO),
        "single": Source(KIJAI_REPO, ("FramePackI2V_HY_bf16.safetensors",), entry="FramePackI2V_HY_bf16.safetensors",
                         label="single"),
        # Kijai's pre-quantised file (plain float8_e4m3fn); the name is matched against the hub's file list.
        "fp8": Source(KIJAI_REPO, ("FramePackI2V_HY_fp8_e4m3fn*.safetensors",),
                      entry="FramePackI2V_HY_fp8_e4m3fn*.safetensors", label="fp8"),
    },
    "f1": {"sharded": _dit_sharded(F1_REPO)},
}

COMPONENTS: dict[str, Component] = {
    "dit": Component("dit", "--dit", "dit", tuple(DIT_SOURCES["framepack"].values()), "FramePack DiT"),
    "dit-f1": Component("dit-f1", "--dit", "dit", tuple(DIT_SOURCES["f1"].values()), "FramePack-F1 DiT"),
    "vae": Component("vae", "--vae", "vae", (
        Source(HUNYUAN, ("vae/config.json", "vae/diffusion_pytorch_model.safetensors"),
               entry="vae/diffusion_pytorch_model.safetensors"),
    ), "HunyuanVideo VAE"),
    "text_encoder1": Component("text_encoder1", "--text_encoder1", "text_encoder1", (
        Source(HUNYUAN, ("text_encoder/config.json", "text_encoder/model.safetensors.index.json",
                         "text_encoder/model-*-of-*.safetensors"),
               entry="text_encoder/model-*-of-*.safetensors", index="text_encoder/model.safetensors.index.json"),
        Source(COMFY_HV_REPO, ("split_files/text_encoders/llava_llama3_fp16.safetensors",),
               entry="split_files/text_encoders/llava_llama3_fp16.safetensors", label="comfy"),
    ), "LLaMA text encoder"),
    "text_encoder2": Component("text_encoder2", "--text_encoder2", "text_encoder2", (
        Source(HUNYUAN, ("text_encoder_2/config.json", "text_encoder_2/model.safetensors"),
               entry="text_encoder_2/model.safetensors"),
        Source(COMFY_HV_REPO, ("split_files/text_encoders/clip_l.safetensors",),
               entry="split_files/text_encoders/clip_l.safetensors", label="comfy"),
    ), "CLIP-L text encoder"),
    "image_encoder": Component("image_encoder", "--image_encoder", "image_encoder", (
        Source(REDUX_REPO, ("image_encoder/config.json", "image_encoder/model.safetensors"),
               entry="image_encoder/model.safetensors"),
        Source(COMFY_SIGLIP_REPO, ("sigclip_vision_patch14_384.safetensors",),
               entry="sigclip_vision_patch14_384.safetensors", label="comfy"),
    ), "SigLIP image encoder"),
    "tokenizers": Component("tokenizers", None, None, (
        Source(HUNYUAN, ("tokenizer/*", "tokenizer_2/*"), entry="tokenizer/tokenizer_config.json"),
    ), "LLaMA and CLIP tokenizers"),
}

# `--components` names, in download order (`dit` is the DiT of each --variant).
COMPONENT_NAMES = ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder", "tokenizers")
FLAG_COMPONENT = {"--dit": "dit", "--vae": "vae", "--text_encoder1": "text_encoder1",
                  "--text_encoder2": "text_encoder2", "--image_encoder": "image_encoder"}


def dit_component(f1: bool) -> Component:
    return COMPONENTS["dit-f1" if f1 else "dit"]


def dit_source(variant: str, dit_format: str) -> Source:
    """The DiT source of one variant (`framepack` or `f1`) in one format.

    Raises:
        ValueError: no such file is published (F1 exists only sharded), naming the flag and the fix.
    """
    per = DIT_SOURCES[variant]
    if dit_format not in per:
        have = ", ".join(per)
        raise ValueError(f"--dit_format {dit_format}: the FramePack-F1 DiT is published only as {have} "
                         f"({F1_REPO}); use --dit_format sharded with --variant f1 or both")
    return per[dit_format]


def download_command(names: list[str], f1: bool = False, models_dir: str | None = None) -> str:
    """The exact `framepack download ...` command that fetches these components (`dit` meaning the DiT of `f1`)."""
    parts = ["framepack", "download"]
    if f1 and "dit" in names:
        parts += ["--variant", "f1"]
    ordered = [n for n in COMPONENT_NAMES if n in names]
    if ordered != list(COMPONENT_NAMES):
        parts += ["--components", ",".join(ordered)]
    if models_dir is not None:
        parts += ["--models_dir", _quote(models_dir)]
    return " ".join(parts)


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


# What each command loads (components; `dit-f1` for the --f1 forms), for `framepack inspect DIR` and `doctor`.
COMMAND_NEEDS: dict[str, tuple[str, ...]] = {
    "generate / one-frame / kisekae": ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder", "tokenizers"),
    "generate --f1": ("dit-f1", "vae", "text_encoder1", "text_encoder2", "image_encoder", "tokenizers"),
    "cache latents": ("vae", "image_encoder"),
    "cache text": ("text_encoder1", "text_encoder2", "tokenizers"),
    "train": ("dit",),
    "train --f1": ("dit-f1",),
    "train --sample_prompts": ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder", "tokenizers"),
    "lora merge": ("dit",),
}


def fetch_command(components: list[str], models_dir: str | None = None) -> str:
    """`download_command` for catalog component names, `dit-f1` included (`dit` + `dit-f1` = `--variant both`)."""
    names = ["dit" if c == "dit-f1" else c for c in components]
    names = list(dict.fromkeys(names))
    cmd = download_command(names, f1="dit-f1" in components and "dit" not in components, models_dir=models_dir)
    if "dit-f1" in components and "dit" in components:
        cmd = cmd.replace("framepack download", "framepack download --variant both", 1)
    return cmd
