"""Options of `framepack generate`, `framepack one-frame` and `framepack kisekae`.

Every option of the reference generator (musubi-tuner `fpack_generate_video.py`, same names and defaults)
plus ours (`--dtype`, `--tokenizer1/2`, `--crf`, `--output_name`, `--verbose`). Cross-field rules run here,
before any model loads, and name the flags in their messages.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from framepack_cli.options.base import (
    DECODE_HELP,
    OptionsBase,
    check_file,
    check_files,
    check_output_dir,
    check_regexes,
    cli,
    decode_conflict,
    lora_count_errors,
)
from framepack_cli.options.sections import parse_section_values
from framepack_cli.options.seeds import seed_errors

MODELS = "Models"
LORA = "LoRA"
PROMPT = "Prompt and images"
VIDEO = "Video"
SAMPLING = "Sampling"
ONE_FRAME = "One-frame"
PERF = "Speed and memory"
VAE = "VAE decode"
OUTPUT = "Output"
BATCH = "Batch and interactive"

MAX_BLOCKS_TO_SWAP = 38
NO_GENERATION = "--latent_path or --save_merged_model"  # the runs that decode or merge instead of generating
# Sanity bounds of `--force` (engine/resources.py enforces them): no real run comes near them.
MAX_SECTIONS, MAX_WINDOW, MAX_SIDE, MAX_STEPS = 1000, 64, 4096, 1000

DTYPE = Literal["auto", "float32", "bfloat16", "float16"]


def F(default=None, description: str = "", **kw):  # noqa: N802 - short field helper
    extra = {k: kw.pop(k) for k in ("variadic", "aliases", "metavar", "panel", "argument", "hidden", "required",
                                         "unbuilt") if k in kw}
    return Field(default, description=description, json_schema_extra=cli(**extra), **kw)


MODELS_DIR_HELP = ("Folder of `framepack download --models_dir`: the model flags not given are looked for there, "
                   "then in $FRAMEPACK_HOME/models and the Hugging Face cache (never the network).")
FOUND = " Default: the downloaded one (see --models_dir)."


def models_dir_field(panel: str):
    """The `--models_dir` option of every command that loads models."""
    return F(None, MODELS_DIR_HELP, panel=panel, metavar="DIR")


def split_list(text: str, sep: str) -> list[str]:
    return [p.strip() for p in text.split(sep) if p.strip()]


class OneFrameSpec(OptionsBase):
    """Parsed `--one_frame_inference` string (`default`, `no_2x`, `no_4x`, `no_post`, `target_index=N`,
    `control_index=a;b`)."""

    no_2x: bool = False
    no_4x: bool = False
    no_post: bool = False
    target_index: int | None = None
    control_index: tuple[int, ...] | None = None


ONE_FRAME_WORDS = ("default", "no_2x", "no_4x", "no_post", "target_index=N", "control_index=a;b")


def parse_one_frame(text: str) -> OneFrameSpec:
    """Parse the option string; unknown words are an error (the reference silently ignores them).

    Raises:
        ValueError: naming the bad word and the accepted ones.
    """
    vals: dict = {}
    for word in split_list(text, ","):
        key, eq, value = word.partition("=")
        key = key.strip()
        if not eq and key in ("default", "no_2x", "no_4x", "no_post"):
            if key != "default":
                vals[key] = True
            continue
        if eq and key == "target_index":
            try:
                vals["target_index"] = int(value)
            except ValueError:
                raise ValueError(f"--one_frame_inference: target_index must be an integer, got {value!r}") from None
            if vals["target_index"] < 0:
                raise ValueError(f"--one_frame_inference: target_index must be >= 0, got {value}")
            continue
        if eq and key == "control_index":
            try:
                idx = tuple(int(v) for v in split_list(value, ";"))
            except ValueError:
                raise ValueError(
                    f"--one_frame_inference: control_index must be integers separated by ';', got {value!r}"
                ) from None
            if not idx or any(i < 0 for i in idx):
                raise ValueError(f"--one_frame_inference: control_index must be integers >= 0, got {value!r}")
            vals["control_index"] = idx
            continue
        raise ValueError(
            f"--one_frame_inference: unknown option {word!r} (accepted: {', '.join(ONE_FRAME_WORDS)})"
        )
    return OneFrameSpec(**vals)


class GenerateOptions(OptionsBase):
    """Generate a video from a start image (or decode saved latents with --latent_path)."""

    # --- models
    dit: str | None = F(None, "DiT weights: single file, first shard of a sharded set, or a directory (the F1 DiT "
                        "with --f1)." + FOUND, panel=MODELS)
    vae: str | None = F(None, "VAE weights: pytorch_model.pt, diffusers .safetensors, or a directory." + FOUND,
                        panel=MODELS)
    text_encoder1: str | None = F(None, "LLaMA text encoder: Comfy-Org single file, first shard, or directory." + FOUND,
                                  panel=MODELS)
    text_encoder2: str | None = F(None, "CLIP-L text encoder: single file or directory." + FOUND, panel=MODELS)
    image_encoder: str | None = F(None, "SigLIP image encoder: single file or directory." + FOUND, panel=MODELS)
    models_dir: str | None = models_dir_field(MODELS)
    tokenizer1: str | None = F(None, "LLaMA tokenizer directory (default: tokenizer/ beside the weights, then the "
                               "HF cache).", panel=MODELS)
    tokenizer2: str | None = F(None, "CLIP tokenizer directory (default: tokenizer_2/ beside the weights, then the "
                               "HF cache).", panel=MODELS)
    f1: bool = F(False, "FramePack-F1 forward sampling (use the F1 DiT weights).", panel=MODELS)
    disable_numpy_memmap: bool = F(
        False, "Accepted for musubi compatibility; no effect (framepack reads safetensors with safetensors' own "
        "loader, not a numpy memmap).", panel=MODELS)

    # --- LoRA
    lora_weight: list[str] | None = F(None, "LoRA files (several allowed).", variadic=True, panel=LORA)
    lora_multiplier: list[float] | None = F(None, "One multiplier for all LoRAs or one each; missing ones are 1.0.",
                                            variadic=True, panel=LORA)
    include_patterns: list[str] | None = F(None, "Regex per LoRA: only modules matching it are merged.",
                                           variadic=True, panel=LORA)
    exclude_patterns: list[str] | None = F(None, "Regex per LoRA: modules matching it are skipped.",
                                           variadic=True, panel=LORA)
    lycoris: bool = F(False, "Accepted for musubi compatibility; not needed: LoHa/LoKr (LyCORIS) files are detected "
                      "and merged without it.", panel=LORA)
    save_merged_model: str | None = F(None, "Save the DiT with the LoRAs merged to this file and exit.", panel=LORA)

    # --- prompt and images
    prompt: str | None = F(None, "Prompt. Per section: 'p1|p2' (time order) or '0:p1;;;1:p2;;;-1:p3'.", panel=PROMPT,
                           required=f"unless --from_file, --interactive, {NO_GENERATION}")
    negative_prompt: str | None = F(None, "Negative prompt (used only when --guidance_scale is not 1).", panel=PROMPT)
    custom_system_prompt: str | None = F(None, "Replace the LLaMA system prompt.", panel=PROMPT)
    image_path: str | None = F(None, "Start image. Per section: 'a.png|b.png' or '0:a.png;;;-1:b.png'.", panel=PROMPT)
    end_image_path: str | None = F(None, "End image (vanilla only, not with --f1).", panel=PROMPT)

    # --- video
    video_size: tuple[int, int] = F((256, 256), "Height and width in pixels, multiples of 16.", metavar="H W",
                                    panel=VIDEO)
    video_seconds: float = F(5.0, "Length in seconds (sections are counted at 30 fps, as the reference).",
                             panel=VIDEO, gt=0)
    video_sections: int | None = F(None, "Number of sections; overrides --video_seconds.", panel=VIDEO, ge=1)
    fps: int = F(30, "Frames per second of the output video.", panel=VIDEO, ge=1)
    latent_window_size: int = F(9, "Latent frames per section (the released models use 9).", panel=VIDEO, ge=1)
    latent_paddings: str | None = F(None, "Comma list of per-section paddings (vanilla only), e.g. '3,2,1,0'.",
                                    panel=VIDEO)

    # --- sampling
    sample_solver: Literal["unipc"] = F("unipc", "Sampler (flow-matching UniPC bh1).", panel=SAMPLING)
    infer_steps: int = F(25, "Sampling steps.", panel=SAMPLING, ge=1)
    seed: int | list[int] | None = F(
        None, "Seed (random when absent; printed and saved). Several seeds, or a range: --seed 1 2 3, --seed 10-13: "
        "one video each, the models loaded once, the seed in each output name.", panel=SAMPLING, variadic=True,
        metavar="SEED...")
    count: int | None = F(None, "Make N videos: seeds SEED, SEED+1, ... from --seed, or N random seeds without "
                          "it; the models load once and each output name carries its seed.", panel=SAMPLING, ge=1,
                          metavar="N")
    embedded_cfg_scale: float = F(10.0, "Distilled guidance scale.", panel=SAMPLING)
    guidance_scale: float = F(1.0, "Real CFG scale (1 = off, one model call per step).", panel=SAMPLING)
    guidance_rescale: float = F(0.0, "CFG rescale (0 = off).", panel=SAMPLING, ge=0, le=1)
    flow_shift: float | None = F(None, "Fixed flow shift; default depends on the resolution.", panel=SAMPLING, gt=0)
    rope_scaling_factor: float = F(0.5, "Spatial RoPE factor when RoPE scaling is on.", panel=SAMPLING, gt=0)
    rope_scaling_timestep_threshold: int | None = F(
        None, "Scale spatial RoPE for timesteps >= this (about 800; one-frame at higher resolution).",
        panel=SAMPLING, ge=0)

    # --- one-frame
    one_frame_inference: str | None = F(
        None, "One-frame options: default, no_2x, no_4x, no_post, target_index=N, control_index=a;b.",
        panel=ONE_FRAME)
    one_frame_auto_resize: bool = F(False, "Pick the output size from control image 0's aspect ratio.",
                                    panel=ONE_FRAME)
    control_image_path: list[str] | None = F(None, "One-frame control images.", variadic=True, panel=ONE_FRAME)
    control_image_mask_path: list[str] | None = F(
        None, "Masks of the control images, in order (255 keep, 0 drop).", variadic=True, panel=ONE_FRAME)

    # --- speed and memory
    dtype: DTYPE = F(
        "auto", "DiT dtype: auto = bfloat16 on CUDA (as trained and as the reference), float32 on CPU. bfloat16 "
        "also runs on CPU (half the DiT's RAM; the embedded guidance is then rounded to bfloat16 as on CUDA, "
        "10000 -> 9984). float16 works but warns: the model was trained in bfloat16.", panel=PERF)
    vae_dtype: DTYPE = F("auto", "VAE dtype: auto = float16 on CUDA (as the reference), float32 on CPU.", panel=PERF)
    text_encoder_dtype: DTYPE = F(
        "auto", "LLaMA and CLIP-L dtype: auto = float16 on CUDA (as the reference), float32 on CPU.", panel=PERF)
    image_encoder_dtype: DTYPE = F(
        "auto", "SigLIP image encoder dtype: auto = float16 on CUDA (as the reference), float32 on CPU.", panel=PERF)
    force: bool = F(
        False, f"Run requests past the sanity bounds (more than {MAX_SECTIONS} sections, --latent_window_size above "
        f"{MAX_WINDOW}, a --video_size side above {MAX_SIDE}, more than {MAX_STEPS} --infer_steps) and past the "
        "CPU RAM estimate. The GPU memory check always applies.", panel=PERF)
    device: str | None = F(None, "Device (default: cuda if available, else cpu).", panel=PERF)
    attn_mode: Literal["auto", "torch", "sdpa", "flash", "flash3", "sageattn", "sage", "xformers"] = F(
        "auto", "Attention kernel. auto = the fastest installed one that runs the DiT's dtype on this device "
        "(flash3 on Hopper, then sageattn, flash, xformers; sdpa on CPU or with a float32 DiT), said in one line. "
        "torch and sdpa are PyTorch's SDPA (the reference's default, torch); sage = sageattn; flash3 = "
        "FlashAttention 3.", panel=PERF)
    split_attn: bool = F(False, "Attend each sample of a batch separately (less attention memory with batches; "
                         "same result).", panel=PERF)
    fp8: bool = F(False, "Store the DiT's block Linears in fp8 (float8_e4m3fn, plain cast; about 9 GB less with "
                  "the real model), computed in the run's dtype.", panel=PERF)
    fp8_scaled: bool = F(False, "Block-scaled fp8 DiT weights (scales per 64 inputs, chosen at load after the LoRA "
                         "merge): the same memory as --fp8, quality closer to bf16.", panel=PERF)
    fp8_fast: bool = F(False, "With --fp8/--fp8_scaled: a real fp8 matmul (torch._scaled_mm) on GPUs with CUDA "
                       "capability 8.9+ (Ada/Hopper); elsewhere one warning and the dequantising matmul.",
                       panel=PERF)
    fp8_llm: bool = F(False, "Store the LLaMA text encoder in fp8.", panel=PERF)
    blocks_to_swap: int | Literal["auto"] = F(
        0, f"DiT blocks kept in CPU memory and swapped in (0-{MAX_BLOCKS_TO_SWAP}), or auto: as many as the free "
        "GPU memory needs (also with --memory none).", panel=PERF, metavar="N|auto")
    memory: Literal["auto", "none"] | None = F(
        None, "auto: choose --fp8_scaled, --blocks_to_swap and VAE chunking/tiling from the free GPU memory, the "
        "model and the request (one line says the choice; flags you give are kept); none: the flags as given. "
        "Default: auto on CUDA, none on CPU.", panel=PERF)
    use_pinned_memory_for_block_swap: bool = F(False, "Page-locked host buffers for --blocks_to_swap (faster "
                                               "copies, uses that much non-pageable RAM).", panel=PERF)
    compile: bool = F(False, "torch.compile each DiT block (dynamic shapes across sections). Without a working "
                      "compiler: one warning, then the plain (eager) blocks.", panel=PERF)
    compile_backend: str = F("inductor", "torch.compile backend (with --compile).", panel=PERF)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = F(
        "default", "torch.compile mode (with --compile).", panel=PERF)
    compile_dynamic: Literal["true", "false", "auto"] | None = F(
        None, "torch.compile dynamic shapes (with --compile; default auto: static first, dynamic when a shape "
        "changes).", panel=PERF)
    compile_fullgraph: bool = F(False, "torch.compile fullgraph (with --compile).", panel=PERF)
    compile_cache_size_limit: int | None = F(None, "torch._dynamo cache size limit (with --compile).",
                                             panel=PERF, ge=1)
    teacache_thresh: float | None = F(
        None, "TeaCache (FramePack's): skip the DiT blocks on steps whose input changed little since the last "
        "computed one; 0.1 skips few steps, 0.15 about half (FramePack: 1.6x / 2.1x faster); 0 computes every step. "
        "Default: off.", panel=PERF, ge=0, metavar="T")
    magcache_mag_ratios: str | None = F(
        None, "MagCache on, with these residual ratios: a comma list, 0 for the built-in ones (50 steps), or the "
        "file --magcache_calibration wrote; resampled to --infer_steps.", panel=PERF, metavar="R,R,...|0|FILE")
    magcache_retention_ratio: float = F(0.2, "MagCache: this share of the first steps is always computed.",
                                        panel=PERF, ge=0, le=1)
    magcache_threshold: float = F(0.24, "MagCache: accumulated error allowed while skipping (0 skips nothing).",
                                  panel=PERF, ge=0)
    magcache_k: int = F(6, "MagCache: at most this many steps skipped in a row.", panel=PERF, ge=0)
    magcache_calibration: bool = F(
        False, "Measure the MagCache ratios of this model instead of skipping steps: printed after each section "
        "and written to <save_path>/<output_name>.magcache_ratios.txt for --magcache_mag_ratios.", panel=PERF)

    # --- VAE
    vae_tiling: bool = F(False, "Spatial VAE tiling with 256 px tiles.", panel=VAE)
    vae_chunk_size: int | None = F(None, "Chunk the VAE's causal convolutions along width (exact, saves memory).",
                                   panel=VAE, ge=1)
    vae_spatial_tile_sample_min_size: int | None = F(None, "VAE tile size in pixels (turns tiling on).", panel=VAE,
                                                     ge=8)
    bulk_decode: bool = F(False, "Decode all frames at once (faster, more memory); same as --decode bulk.",
                          panel=VAE)
    decode: Literal["stream", "blend", "bulk"] | None = F(None, DECODE_HELP, panel=VAE)

    # --- output
    save_path: str = F(..., "Output directory.", panel=OUTPUT)
    output_type: Literal["video", "images", "latent", "both", "latent_images"] = F(
        "video", "What to write: video, images, latent, both (latent+video), latent_images.", panel=OUTPUT)
    output_name: str | None = F(None, "Base name of the outputs (default: timestamp_seed).", panel=OUTPUT)
    crf: int = F(16, "H.264 quality (0 best - 51 worst).", panel=OUTPUT, ge=0, le=51)
    no_metadata: bool = F(False, "Do not store the settings in the outputs.", panel=OUTPUT)
    settings_from: str | None = F(
        None, "Re-create the run that wrote this output (.mp4, .png, PNG folder or _latent.safetensors): its "
        "prompts, seed, sizes, steps, LoRAs and images (checked unchanged by sha256); options given here win.",
        panel=OUTPUT, metavar="OUTPUT")
    preview: str | None = F(
        None, "Live preview of what is sampled so far, rewritten after every section (kept at the end): a .png "
        "(one tile per section; the frame for one-frame) or .mp4 path, or `auto` for "
        "<save_path>/<output_name>.preview.png (one-frame) / .preview.mp4 (video).", panel=OUTPUT,
        metavar="PATH|auto")
    preview_mode: Literal["latent", "vae"] = F(
        "latent", "--preview pixels: latent (a fixed linear latent-to-RGB projection, no VAE, milliseconds, "
        "half width and height) or vae (the VAE decodes each new section: exact frames, seconds, more memory).",
        panel=OUTPUT)
    latent_path: list[str] | None = F(None, "Decode these saved latent files instead of generating.",
                                      variadic=True, panel=OUTPUT)
    verbose: bool = F(False, "More detail (e.g. LoRA keys that matched nothing).", panel=OUTPUT)

    # --- batch / interactive
    from_file: str | None = F(None, "Prompt file: one job per line with inline --w --h --f --d --s --g --i ...",
                              panel=BATCH)
    interactive: bool = F(False, "Read prompts from the console (Ctrl-D exits). Keeps the DiT, VAE and image "
                          "encoder loaded between prompts; the text encoders load again for a new prompt.",
                          panel=BATCH)
    keep_models: bool = F(False, "--interactive: keep the text encoders loaded too (about 16 GB more RAM with the "
                          "real LLaMA; no reload for new prompts).", panel=BATCH)

    # --- resume after a crash (framepack_cli.options.resume, framepack_cli.engine.resume)
    resume: str | None = F(None, "Continue an interrupted video (or --from_file batch) from its checkpoint: a "
                           ".NAME.resume.safetensors / .NAME.batch.resume.json file or the --save_path holding it "
                           "(the newest there). Settings and models come from the checkpoint.", panel=BATCH,
                           metavar="FILE_OR_SAVE_PATH")
    no_resume_file: bool = F(False, "Write no resume checkpoint (by default <save_path>/.<output_name>.resume"
                             ".safetensors is written after each section and removed when the video is written).",
                             panel=BATCH)

    # ---------------------------------------------------------------------------------------------------------
    @field_validator("video_size")
    @classmethod
    def _size16(cls, v: tuple[int, int]) -> tuple[int, int]:
        h, w = v
        bad = [x for x in (h, w) if x <= 0 or x % 16]
        if bad:
            sug = " ".join(str(max(16, round(x / 16) * 16)) for x in (h, w))
            raise ValueError(f"--video_size: height and width must be positive multiples of 16, got {h} {w} "
                             f"(try {sug})")
        return v

    @field_validator("seed", mode="before")
    @classmethod
    def _seeds(cls, v):
        """`--seed 42` -> 42; `--seed 1 2 3` / `--seed 10-13` -> a list (`framepack_cli.options.seeds`)."""
        from framepack_cli.options.seeds import parse_seeds

        return parse_seeds(v)

    @field_validator("blocks_to_swap", mode="before")
    @classmethod
    def _swap(cls, v):
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise ValueError(f"--blocks_to_swap: {v!r} is not an integer or auto") from None
        if not 0 <= n <= MAX_BLOCKS_TO_SWAP:
            raise ValueError(f"--blocks_to_swap: {n} is out of range; expected 0-{MAX_BLOCKS_TO_SWAP} or auto")
        return n

    @field_validator("latent_paddings")
    @classmethod
    def _paddings(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            vals = [int(x) for x in split_list(v, ",")]
        except ValueError:
            raise ValueError(
                f"--latent_paddings: expected comma-separated integers like '3,2,1,0', got {v!r}"
            ) from None
        if not vals or any(x < 0 for x in vals):
            raise ValueError(f"--latent_paddings: expected integers >= 0, got {v!r}")
        return v

    @field_validator("include_patterns", "exclude_patterns")
    @classmethod
    def _regex(cls, v: list[str] | None, info) -> list[str] | None:
        return check_regexes(v, f"--{info.field_name}")

    @field_validator("one_frame_inference")
    @classmethod
    def _one_frame(cls, v: str | None) -> str | None:
        if v is not None:
            parse_one_frame(v)
        return v

    @model_validator(mode="before")
    @classmethod
    def _resume(cls, data):
        """--resume: the interrupted run's settings, with what the command line may change (options.resume)."""
        if isinstance(data, dict) and data.get("resume"):
            from framepack_cli.options.resume import merge_resume

            return merge_resume(data, one_frame_default=cls.model_fields["one_frame_inference"].default is not None,
                                options_cls=cls)
        return data

    @model_validator(mode="after")
    def _cross(self):
        errors = _cross_checks(self)
        if errors:
            raise ValueError("\n".join(errors))
        return self

    @classmethod
    def model_flags(cls, given: dict) -> tuple[str, ...]:
        """The model flags this run needs (for model resolution, `cli.models`): the VAE alone to decode
        --latent_path, the DiT alone for --save_merged_model, else all five."""
        if given.get("resume"):
            return ()  # the checkpoint names the model files
        if given.get("latent_path"):
            return ("--vae",)
        if given.get("save_merged_model"):
            return ("--dit",)
        return ("--dit", "--vae", "--text_encoder1", "--text_encoder2", "--image_encoder")

    # --- derived values the engine reads
    @property
    def one_frame(self) -> OneFrameSpec | None:
        return parse_one_frame(self.one_frame_inference) if self.one_frame_inference is not None else None

    @property
    def paddings(self) -> list[int] | None:
        return [int(x) for x in split_list(self.latent_paddings, ",")] if self.latent_paddings else None


def _cross_checks(o: GenerateOptions) -> list[str]:
    """All cross-field problems at once, each naming its flags."""
    errs: list[str] = []
    if o.from_file and o.interactive:
        errs.append("--from_file and --interactive cannot be combined; pick one")
    if o.keep_models and not o.interactive:
        errs.append("--keep_models applies to --interactive only (other runs load each model once anyway)")
    decode_only = bool(o.latent_path)
    errs += seed_errors(o)
    if not decode_only and not o.save_merged_model and not (o.prompt is not None or o.from_file or o.interactive):
        errs.append("--prompt is required (or --from_file / --interactive, or --latent_path to decode saved latents)")
    required = ("vae",) if decode_only else ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder")
    if o.save_merged_model and not decode_only:
        required = ("dit",)
    for name in required:
        if getattr(o, name) is None:
            why = "to decode --latent_path" if decode_only else "to generate"
            errs.append(f"--{name}: required {why}")
    for name in ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder", "tokenizer1", "tokenizer2",
                 "end_image_path", "from_file"):
        try:
            check_file(getattr(o, name), f"--{name}")
        except ValueError as e:
            errs.append(str(e))
    try:
        check_output_dir(o.save_path, "--save_path")
    except ValueError as e:
        errs.append(str(e))
    if o.output_name is not None and (not o.output_name.strip() or any(c in o.output_name for c in "/\\")):
        errs.append(f"--output_name: {o.output_name!r} must be a plain file name (no folders); "
                    "use --save_path for the folder")
    if (conflict := decode_conflict(o.decode, o.bulk_decode)) is not None:
        errs.append(conflict)
    errs += _preview_errors(o)
    if o.latent_path and o.output_type == "latent":
        errs.append("--output_type latent with --latent_path: nothing to do (the latents are already saved); "
                    "use video, images or both")
    for name in ("lora_weight", "control_image_path", "control_image_mask_path", "latent_path"):
        try:
            check_files(getattr(o, name), f"--{name}")
        except ValueError as e:
            errs.append(str(e))
    if o.image_path is not None:
        try:
            images = parse_section_values(o.image_path)
        except ValueError as e:
            errs.append(f"--image_path: {e}")
        else:
            from pathlib import Path

            missing = sorted({p for p in images.values() if not Path(p).exists()})
            if missing:
                errs.append(f"--image_path: file not found: {', '.join(missing)}")
    if o.prompt is not None:
        try:
            parse_section_values(o.prompt)
        except ValueError as e:
            errs.append(f"--prompt: {e}")
    if o.end_image_path and o.f1:
        errs.append("--end_image_path cannot be used with --f1 (F1 generates forward from the start image); "
                    "drop one of them")
    if o.latent_paddings and o.f1:
        errs.append("--latent_paddings applies to vanilla FramePack only, not --f1")
    n_lora = len(o.lora_weight or [])
    if o.lora_multiplier and not n_lora:
        errs.append("--lora_multiplier given without --lora_weight")
    else:
        errs += lora_count_errors(n_lora, o.lora_multiplier, o.include_patterns, o.exclude_patterns)
    for name in ("include_patterns", "exclude_patterns"):
        if getattr(o, name) and not n_lora:
            errs.append(f"--{name} given without --lora_weight")
    if o.save_merged_model and not n_lora:
        errs.append("--save_merged_model needs --lora_weight (there is nothing to merge)")
    if o.fp8_fast and not (o.fp8 or o.fp8_scaled):
        errs.append("--fp8_fast needs --fp8 or --fp8_scaled (it speeds up fp8 weights)")
    if o.save_merged_model and o.fp8_scaled:
        errs.append("--save_merged_model cannot be combined with --fp8_scaled (merged models are saved unquantized)")
    n_ctrl = len(o.control_image_path or [])
    n_mask = len(o.control_image_mask_path or [])
    if n_mask > max(n_ctrl, 0):
        errs.append(f"--control_image_mask_path: {n_mask} masks for {n_ctrl} --control_image_path images "
                    "(at most one mask per control image)")
    if (n_ctrl or n_mask) and o.one_frame_inference is None:
        errs.append("--control_image_path / --control_image_mask_path need --one_frame_inference "
                    "(or use `framepack one-frame`)")
    if o.one_frame_inference is not None:
        try:
            spec = parse_one_frame(o.one_frame_inference)
        except ValueError:
            spec = None  # reported by the field validator
        if spec is not None and spec.control_index is not None:
            n_clean = max(n_ctrl, 1)
            allowed = {n_clean} if spec.no_post else {n_clean, n_clean + 1}
            if len(spec.control_index) not in allowed:
                want = " or ".join(str(a) for a in sorted(allowed))
                errs.append(
                    f"--one_frame_inference: control_index has {len(spec.control_index)} entries "
                    f"({';'.join(map(str, spec.control_index))}) for {n_ctrl} control image(s); expected {want}"
                    + ("" if spec.no_post else " (the extra one sets the index of the zero post latent)")
                )
    return errs


PREVIEW_SUFFIXES = (".png", ".mp4")


def _preview_errors(o: GenerateOptions) -> list[str]:
    """`--preview` must name a .png / .mp4 (or be `auto`) in a folder that can exist, on a run that samples."""
    if o.preview is None:
        if "preview_mode" in o.model_fields_set:
            return [f"--preview_mode {o.preview_mode} given without --preview; add --preview auto (or a .png / .mp4 "
                    "path)"]
        return []
    if o.latent_path or o.save_merged_model:
        return [f"--preview: nothing is sampled with {NO_GENERATION}; drop --preview"]
    if o.preview == "auto":
        return []
    from pathlib import Path

    path = Path(o.preview)
    if path.suffix.lower() not in PREVIEW_SUFFIXES:
        return [f"--preview: {o.preview!r} must end in .png or .mp4 (or be `auto` for "
                "<save_path>/<output_name>.preview.png / .mp4)"]
    if path.is_dir():
        return [f"--preview: {o.preview} is a folder; give a file path ending in .png or .mp4"]
    try:
        check_output_dir(str(path.parent), "--preview")
    except ValueError as e:
        return [str(e)]
    return []


class OneFrameOptions(GenerateOptions):
    """Edit a single image with one-frame inference."""

    one_frame_inference: str | None = F(
        "default", "One-frame options: default, no_2x, no_4x, no_post, target_index=N, control_index=a;b.",
        panel=ONE_FRAME)


KISEKAE_RECIPE = "target_index=1,control_index=0;10,no_post,no_2x,no_4x"


class KisekaeOptions(GenerateOptions):
    """Kisekaeichi: the start image wearing what the reference image shows."""

    start: str | None = F(None, "Start image (the person to dress); default control image 1 and --image_path.",
                          panel=ONE_FRAME, required="unless --control_image_path")
    reference: str | None = F(None, "Reference image (the clothes); control image 2. Its alpha channel is its "
                              "mask unless --reference-mask is given.", panel=ONE_FRAME,
                              required="unless --control_image_path")
    start_mask: str | None = F(None, "Mask of the start image (255 keep, 0 drop).", panel=ONE_FRAME)
    reference_mask: str | None = F(None, "Mask of the reference image (255 keep, 0 drop).", panel=ONE_FRAME)
    one_frame_inference: str | None = F(KISEKAE_RECIPE, "One-frame options (the Kisekaeichi recipe by default).",
                                        panel=ONE_FRAME)

    @model_validator(mode="before")
    @classmethod
    def _recipe(cls, data):
        """Map --start/--reference/masks onto the one-frame flags unless those were given explicitly."""
        if not isinstance(data, dict):
            return data
        d = dict(data)
        start, ref = d.get("start"), d.get("reference")
        if d.get("control_image_path") is None:
            if start is None and ref is None:
                raise ValueError("--start and --reference are required (or give --control_image_path START REF)")
            if (start is None) != (ref is None):
                given, missing = ("--start", "--reference") if ref is None else ("--reference", "--start")
                raise ValueError(f"{missing} is required together with {given}")
        if d.get("control_image_path") is None and start is not None and ref is not None:
            # Masks stay in --start-mask/--reference-mask: the engine pairs them with their images (a
            # reference mask without a start mask must not shift into the start's slot).
            d["control_image_path"] = [start, ref]
        if d.get("image_path") is None and start is not None:
            d["image_path"] = start
        return d

    @model_validator(mode="after")
    def _need_images(self):
        if (self.start or self.reference) and self.control_image_path != [self.start, self.reference]:
            raise ValueError("--start/--reference cannot be combined with --control_image_path; use one or the other")
        if (self.start_mask or self.reference_mask) and self.control_image_mask_path:
            raise ValueError("--start-mask/--reference-mask cannot be combined with --control_image_mask_path")
        for name in ("start", "reference", "start_mask", "reference_mask"):
            check_file(getattr(self, name), f"--{name.replace('_', '-')}")
        return self
