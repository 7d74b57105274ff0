"""Options of `framepack ui`: the local web app (framepack_cli.ui).

The model flags and `--models_dir` are those of `framepack generate` (missing ones are found the same way);
the rest says where the app listens and who may use it. It listens on 127.0.0.1 unless `--listen` is given,
and binding any other interface requires `--auth USER:PASS`. It never opens a public share link.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from framepack_cli.options.base import OptionsBase, check_file, check_output_dir
from framepack_cli.options.generate import FOUND, MODELS_DIR_HELP, F

MODELS = "Models"
SERVER = "Server"
OUTPUT = "Output"
LOOPBACK_NAMES = ("localhost",)
LISTEN_HOST = "0.0.0.0"
DEFAULT_HOST = "127.0.0.1"


def default_lora_dir() -> Path:
    """`$FRAMEPACK_HOME/loras`, else `~/.cache/framepack/loras` (beside the default models folder)."""
    home = os.environ.get("FRAMEPACK_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "framepack") / "loras"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: reachable from this machine only."""
    if host.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def split_auth(text: str) -> tuple[str, str]:
    """`USER:PASS` -> (user, password); the password may itself contain ':'.

    Raises:
        ValueError: naming --auth and the expected form (the password is never repeated back).
    """
    user, sep, password = text.partition(":")
    if not sep or not user.strip() or not password:
        shown = repr(user) if sep else "a value without ':'"
        raise ValueError(f"--auth: expected USER:PASS with both parts non-empty (got {shown}"
                         f"{':...' if sep else ''}); e.g. --auth me:a-long-password")
    return user, password


class UiOptions(OptionsBase):
    """Start the local web app."""

    dit: str | None = F(None, "DiT weights (file, first shard or directory)." + FOUND, panel=MODELS)
    vae: str | None = F(None, "VAE weights." + FOUND, panel=MODELS)
    text_encoder1: str | None = F(None, "LLaMA text encoder." + FOUND, panel=MODELS)
    text_encoder2: str | None = F(None, "CLIP-L text encoder." + FOUND, panel=MODELS)
    image_encoder: str | None = F(None, "SigLIP image encoder." + FOUND, panel=MODELS)
    models_dir: str | None = F(None, MODELS_DIR_HELP, panel=MODELS, metavar="DIR")
    tokenizer1: str | None = F(None, "LLaMA tokenizer directory (default: beside the weights, then the HF cache).",
                               panel=MODELS)
    tokenizer2: str | None = F(None, "CLIP tokenizer directory (default: beside the weights, then the HF cache).",
                               panel=MODELS)
    device: str | None = F(None, "Device (default: cuda if available, else cpu).", panel=MODELS)
    memory: Literal["auto", "none"] | None = F(
        None, "Memory policy of every job (as `framepack generate --memory`): auto chooses fp8 and block swap from "
        "the free GPU memory; none keeps the defaults. Default: auto on CUDA, none on CPU.", panel=MODELS)

    f1_dit: str | None = F(None, "FramePack-F1 DiT for the F1 toggle (default: --dit when given, else the F1 DiT found "
                           "in the models folders).", panel=MODELS)
    lora_dir: str | None = F(None, "Folder the LoRA picker lists (*.safetensors; default: <--models_dir>/loras, "
                             "else $FRAMEPACK_HOME/loras).", panel=MODELS, metavar="DIR")

    host: str = F(DEFAULT_HOST, "Address to listen on. Anything but a loopback address needs --auth.", panel=SERVER)
    port: int = F(7860, "Port to listen on.", panel=SERVER, ge=1, le=65535)
    listen: bool = F(False, f"Listen on all interfaces ({LISTEN_HOST}): anyone on the network can reach the app, "
                     "so --auth is required.", panel=SERVER)
    auth: str | None = F(None, "USER:PASS that the browser must give to use the app.", panel=SERVER,
                         metavar="USER:PASS")

    save_path: str = F("outputs", "Folder of every output; the app keeps its queue, uploads and previews in "
                       "<save_path>/.framepack-ui/.", panel=OUTPUT, metavar="DIR")

    @field_validator("auth")
    @classmethod
    def _auth(cls, v: str | None) -> str | None:
        if v is not None:
            split_auth(v)
        return v

    @model_validator(mode="after")
    def _cross(self):
        errs: list[str] = []
        if self.listen and "host" in self.model_fields_set and self.host != LISTEN_HOST:
            errs.append(f"--listen binds {LISTEN_HOST}, but --host {self.host} was given too; keep one of them")
        host = self.bind_host
        if not is_loopback(host) and self.auth is None:
            flag = "--listen" if self.listen else f"--host {host}"
            errs.append(f"{flag}: the app would be reachable from other machines without a password; "
                        "add --auth USER:PASS (or drop it to stay on 127.0.0.1)")
        for name in ("dit", "f1_dit", "vae", "text_encoder1", "text_encoder2", "image_encoder", "tokenizer1",
                     "tokenizer2"):
            try:
                check_file(getattr(self, name), f"--{name}")
            except ValueError as e:
                errs.append(str(e))
        if self.lora_dir is not None and Path(self.lora_dir).exists() and not Path(self.lora_dir).is_dir():
            errs.append(f"--lora_dir {self.lora_dir}: not a folder; give the folder that holds the LoRA files")
        try:
            check_output_dir(self.save_path, "--save_path")
        except ValueError as e:
            errs.append(str(e))
        if errs:
            raise ValueError("\n".join(errs))
        return self

    @classmethod
    def model_flags(cls, given: dict) -> tuple[str, ...]:
        """All five models (resolved like `framepack generate`, `cli.models`)."""
        return ("--dit", "--vae", "--text_encoder1", "--text_encoder2", "--image_encoder")

    @property
    def lora_folder(self) -> Path:
        """--lora_dir, else <--models_dir>/loras, else $FRAMEPACK_HOME/loras (~/.cache/framepack/loras)."""
        if self.lora_dir is not None:
            return Path(self.lora_dir).expanduser()
        if self.models_dir is not None:
            return Path(self.models_dir).expanduser() / "loras"
        return default_lora_dir()

    @property
    def bind_host(self) -> str:
        return LISTEN_HOST if self.listen else self.host

    @property
    def credentials(self) -> tuple[str, str] | None:
        return split_auth(self.auth) if self.auth else None
