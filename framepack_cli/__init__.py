"""framepack: one command-line tool for FramePack image-to-video (generate, one-frame, Kisekaeichi, LoRA, training)."""

__version__ = "0.1.0"
