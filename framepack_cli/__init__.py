"""framepack: one command-line tool for FramePack image-to-video (generate, one-frame, Kisekaeichi, LoRA, training).

The Python API (`Pipeline`, `Event`, `Result`, `Cancelled`) lives in `framepack_cli.api` and is importable from
here; it loads torch only when first used, so `framepack --help` stays fast.
"""

__version__ = "0.1.0"

__all__ = ["Cancelled", "Event", "Pipeline", "Result", "__version__"]


def __getattr__(name: str):
    if name in ("Cancelled", "Event", "Pipeline", "Result"):
        from framepack_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'framepack_cli' has no attribute {name!r}")
