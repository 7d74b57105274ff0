"""Options of `framepack lora inspect`, `framepack lora convert` and `framepack lora merge`.

The reference has `convert_lora.py` (`--target default|other`, which mis-maps FramePack FFN and single-block
keys) and a HunyuanVideo-only `merge_lora.py`; FramePack merging there goes through
`fpack_generate_video.py --save_merged_model`. These commands cover the same ground for FramePack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from framepack_cli.options.base import (
    OptionsBase,
    check_file,
    check_files,
    check_regexes,
    lora_count_errors,
    per_lora,
)
from framepack_cli.options.generate import FOUND, F, models_dir_field

LORA = "LoRA"
OUTPUT = "Output"


def check_lora_file(value: str, label: str = "FILE") -> list[str]:
    path = Path(value)
    if not path.exists():
        return [f"{label}: file not found: {value}"]
    if not path.is_file():
        return [f"{label}: expected a LoRA file, got a directory: {value}"]
    return []


def check_output(output: str, overwrite: bool, inputs: dict[str, str | None]) -> list[str]:
    """`--output` must be a .safetensors path that is none of the inputs and, unless --overwrite, not a file yet."""
    errs: list[str] = []
    out = Path(output)
    if out.suffix.lower() != ".safetensors":
        errs.append(f"--output: must end in .safetensors, got {output}")
    for label, value in inputs.items():
        if value is not None and Path(value).exists() and out.exists() and out.resolve() == Path(value).resolve():
            errs.append(f"--output: is the same file as {label} ({output}); write to a new file")
            return errs
    if out.is_dir():
        errs.append(f"--output: is a directory: {output} (give a file name)")
    elif out.exists() and not overwrite:
        errs.append(f"--output: file exists: {output} (pass --overwrite to replace it)")
    return errs


class LoraInspectOptions(OptionsBase):
    """Say what a LoRA file is: format, network type, rank, alpha, targets and metadata."""

    file: str = F(..., "LoRA file (.safetensors).", argument=True)
    json_output: bool = F(False, "Print one JSON object instead of a table.", aliases=("--json",))
    verbose: bool = F(False, "List every module and the metadata in full.")

    @model_validator(mode="after")
    def _exists(self):
        errs = check_lora_file(self.file)
        if errs:
            raise ValueError("\n".join(errs))
        return self


class LoraConvertOptions(OptionsBase):
    """Convert a FramePack LoRA between the musubi, diffusers and ComfyUI key layouts."""

    file: str = F(..., "LoRA file to convert (.safetensors).", argument=True)
    to: Literal["musubi", "diffusers", "comfy"] = F(
        ..., "Target layout: musubi (lora_unet_* with lora_down/lora_up/alpha, the reference's --target default), "
        "diffusers (PEFT: transformer.<module>.lora_A/lora_B), comfy (diffusion_model.<module>.lora_A/lora_B, "
        "the layout of the reference's --target other).", panel=OUTPUT)
    output: str = F(..., "Output .safetensors file.", panel=OUTPUT)
    overwrite: bool = F(False, "Replace --output if it exists.", panel=OUTPUT)

    @model_validator(mode="after")
    def _files(self):
        errs = check_lora_file(self.file)
        errs += check_output(self.output, self.overwrite, {"FILE": self.file})
        if errs:
            raise ValueError("\n".join(errs))
        return self


class LoraMergeOptions(OptionsBase):
    """Merge LoRA/LoHa/LoKr files into a FramePack DiT and save the merged DiT."""

    dit: str | None = F(None, "DiT weights: single file, first shard of a sharded set, or a directory." + FOUND,
                        panel=LORA)
    f1: bool = F(False, "Without --dit: merge into the downloaded FramePack-F1 DiT (default: the vanilla one).",
                 panel=LORA)
    models_dir: str | None = models_dir_field(LORA)
    lora_weight: list[str] = F(..., "LoRA files to merge (several allowed).", variadic=True, panel=LORA)
    lora_multiplier: list[float] | None = F(None, "One multiplier for all LoRAs or one each; missing ones are 1.0.",
                                            variadic=True, panel=LORA)
    include_patterns: list[str] | None = F(None, "Regex per LoRA: only modules matching it are merged.",
                                           variadic=True, panel=LORA)
    exclude_patterns: list[str] | None = F(None, "Regex per LoRA: modules matching it are skipped.",
                                           variadic=True, panel=LORA)
    output: str = F(..., "Output .safetensors file of the merged DiT.", panel=OUTPUT)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = F(
        "auto", "dtype of the saved DiT: auto = the dtype stored in --dit (the merge itself runs in float32).",
        panel=OUTPUT)
    overwrite: bool = F(False, "Replace --output if it exists.", panel=OUTPUT)

    @field_validator("include_patterns", "exclude_patterns")
    @classmethod
    def _regex(cls, v: list[str] | None, info) -> list[str] | None:
        return check_regexes(v, f"--{info.field_name}")

    @classmethod
    def model_flags(cls, given: dict) -> tuple[str, ...]:
        """The models model resolution fills (`cli.models`)."""
        return ("--dit",)

    @model_validator(mode="after")
    def _cross(self):
        errs: list[str] = []
        if self.dit is None:
            errs.append("--dit: required to merge")
        for name, check in (("dit", check_file), ("lora_weight", check_files)):
            try:
                check(getattr(self, name), f"--{name}")
            except ValueError as e:
                errs.append(str(e))
        errs += lora_count_errors(len(self.lora_weight), self.lora_multiplier, self.include_patterns,
                                  self.exclude_patterns)
        inputs: dict[str, str | None] = {"--dit": self.dit}
        inputs.update({f"--lora_weight {p}": p for p in self.lora_weight})
        errs += check_output(self.output, self.overwrite, inputs)
        if errs:
            raise ValueError("\n".join(errs))
        return self

    @property
    def multipliers(self) -> list[float]:
        """One multiplier per --lora_weight file (a single value applies to all; missing ones are 1.0)."""
        return per_lora(self.lora_multiplier, len(self.lora_weight), 1.0)
