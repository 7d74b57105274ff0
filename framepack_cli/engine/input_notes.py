"""Warnings about odd inputs, one line each, said before the models load.

The reference accepts these silently; we accept them too (same result on the same seed) but say what will
happen: a missing start image (black), an alpha channel that is dropped, a tiny image blown up to the
target size, a `--video_seconds` that rounds to a noticeably different length, a prompt longer than an
encoder keeps.
"""

from __future__ import annotations

from collections.abc import Iterable

from framepack_cli.plan.sections import SECTION_FPS, video_frame_count

MAX_UPSCALE = 4.0  # bucket-resize factors above this are warned about
SECONDS_TOLERANCE = 0.10  # a video more than 10 % longer or shorter than --video_seconds is warned about
# A prompt of at most this many UTF-8 bytes cannot overflow either encoder (a byte-level BPE token covers
# at least one byte; CLIP keeps 75 tokens between BOS and EOS, and its text cleaning can grow the text a
# little), so its tokens are not counted and the tokenizers need not load.
SHORT_PROMPT_BYTES = 50

BLACK_START = "Warning: no --image_path: starting from a black image (as musubi-tuner does)"
BLACK_SIGLIP = ("Warning: no --image_path: the image encoder sees a black image (as musubi-tuner does); pass "
                "--image_path with the start image to condition on it")


def image_notes(flag: str, path: str, width: int, height: int, *, alpha: str = "dropped") -> list[str]:
    """Alpha and upscale warnings for one input image that is bucket-resized to `width x height`.

    Args:
        flag: the option that named the image.
        path: the image file.
        width / height: the target size in pixels.
        alpha: what happens to an alpha channel: "dropped" (warned), "mask" (it is the image's mask: no
            warning), or the text of a warning tail saying why it is not used.
    """
    from framepack_cli.io.images import bucket_scale, probe_image

    src_w, src_h, has_alpha = probe_image(path)
    out = []
    if has_alpha and alpha != "mask":
        why = ("it is dropped and transparent pixels keep their colour (as musubi-tuner does)"
               if alpha == "dropped" else alpha)
        out.append(f"Warning: {flag} {path} has an alpha channel; {why}")
    scale = bucket_scale(src_w, src_h, width, height)
    if scale > MAX_UPSCALE:
        out.append(f"Warning: {flag} {path} is {src_w}x{src_h}; it is upscaled {scale:.1f}x to cover "
                   f"{width}x{height} (width x height), expect a soft, blurry picture")
    return out


def seconds_note(opts, n: int) -> str | None:
    """`--video_seconds` (given explicitly, no `--video_sections`) that gives a video >10 % off its length."""
    if opts.video_sections is not None or "video_seconds" not in opts.model_fields_set:
        return None
    window, fps, asked = opts.latent_window_size, opts.fps, opts.video_seconds
    frames = video_frame_count(n, window)
    real = frames / fps
    if asked > 0 and abs(real - asked) <= SECONDS_TOLERANCE * asked:
        return None
    at = f" (sections are counted at {SECTION_FPS} fps)" if fps != SECTION_FPS else ""
    return (f"Warning: --video_seconds {asked:g} rounds to {n} section{'s' if n != 1 else ''} of {window} latent "
            f"frames{at}: the video will be {real:.2f} s ({frames} frames at {fps} fps); "
            "--video_sections N sets the count directly")


def prompt_length_notes(prompts: Iterable[tuple[str, str]], tok1, tok2, *, custom_system_prompt: str | None,
                        max_length: int = 256) -> list[str]:
    """One warning per `(name, text)` prompt that an encoder truncates, naming the tokens dropped per encoder."""
    from framepack_cli.models.text_encoders import prompt_overflow

    out = []
    for name, text in prompts:
        over = prompt_overflow(text, tok1, tok2, custom_system_prompt=custom_system_prompt, max_length=max_length)
        parts = []
        if "LLaMA" in over:
            n, kept = over["LLaMA"]
            parts.append(f"LLaMA keeps {kept} of its {n} tokens (the last {n - kept} are dropped)")
        if "CLIP-L" in over:
            n, kept = over["CLIP-L"]
            parts.append(f"CLIP-L keeps {kept} of its {n} tokens incl. BOS/EOS (the last {n - kept} are dropped)")
        if parts:
            out.append(f"Warning: {name} is too long: {'; '.join(parts)}")
    return out


def may_overflow(text: str) -> bool:
    return len(text.encode("utf-8")) > SHORT_PROMPT_BYTES
