"""Tokenizers of the text encoders: finding the LLaMA-3 (`tokenizer/`) and CLIP (`tokenizer_2/`) folders,
and loading them.

They are looked for, fully offline, in the explicit `--tokenizer1` / `--tokenizer2` folder, beside the
weights' folder or one level above, then in the copies of hunyuanvideo-community/HunyuanVideo that `framepack
download` writes (`$FRAMEPACK_HOME/models`) and the Hugging Face cache, read with huggingface_hub's offline cache
reader (`models.store`; never the network).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from framepack_cli.errors import FramepackError
from framepack_cli.models.hf_build import quiet_transformers
from framepack_cli.models.store import find_tokenizer_snapshot, store_places

HF_REPO = "hunyuanvideo-community/HunyuanVideo"


def _is_tokenizer_dir(d: Path, kind: int) -> bool:
    if not d.is_dir():
        return False
    if (d / "tokenizer.json").is_file():
        return True
    if kind == 1:
        return (d / "tokenizer_config.json").is_file() and (d / "tokenizer.model").is_file()
    return (d / "vocab.json").is_file() and (d / "merges.txt").is_file()


def _weights_dir(path: str | Path | None, subfolder: str) -> list[Path]:
    """Directories in which a tokenizer folder may sit, for a model path given by the user."""
    if path is None:
        return []
    p = Path(path).expanduser()
    out: list[Path] = []
    if p.is_dir():
        out.append(p)
        if (p / subfolder).is_dir():
            out.append(p / subfolder)
    elif p.exists():
        out.append(p.parent)
    out += [d.parent for d in list(out)]
    seen: list[Path] = []
    for d in out:
        if d not in seen:
            seen.append(d)
    return seen


def find_tokenizer_dir(
    kind: int, model_path: str | Path | None, explicit: str | Path | None = None
) -> Path:
    """Locate tokenizer 1 (`tokenizer/`) or 2 (`tokenizer_2/`).

    Order: the explicit directory (or its `tokenizer*/` subfolder); `tokenizer*/` beside the weights'
    directory or one level above; hunyuanvideo-community/HunyuanVideo in `$FRAMEPACK_HOME/models`, then in
    the HF cache (offline).

    Raises:
        FramepackError: not found, with the flag that fixes it.
    """
    name = "tokenizer" if kind == 1 else "tokenizer_2"
    flag = f"--tokenizer{kind}"
    if explicit is not None:
        d = Path(explicit).expanduser()
        for cand in (d, d / name):
            if _is_tokenizer_dir(cand, kind):
                return cand
        raise FramepackError(
            f"{flag}: {d} holds no tokenizer (expected tokenizer.json"
            + (")" if kind == 1 else " or vocab.json + merges.txt)"),
            hint=f"pass the {name} folder of {HF_REPO}",
        )
    sub = "text_encoder" if kind == 1 else "text_encoder_2"
    searched: list[Path] = []
    for base in _weights_dir(model_path, sub):
        cand = base / name
        searched.append(cand)
        if _is_tokenizer_dir(cand, kind):
            return cand
    places = store_places()
    cached = find_tokenizer_snapshot(kind, places)
    if cached is not None and _is_tokenizer_dir(cached, kind):
        return cached
    looked = ", ".join(str(s) for s in searched) or "(no model path)"
    stores = " and ".join(f"{label} {p}" for p, label in places)
    raise FramepackError(
        f"tokenizer {kind} not found (looked in {looked}, and for {HF_REPO}/{name} in {stores})",
        hint=f"fetch it with `framepack download --components tokenizers`, or pass {flag} DIR with the {name} folder "
        f"of {HF_REPO}",
    )


def load_tokenizers(
    text_encoder1_path: str | Path | None,
    text_encoder2_path: str | Path | None,
    tokenizer1: str | Path | None = None,
    tokenizer2: str | Path | None = None,
) -> tuple[Any, Any]:
    """Load the LLaMA-3 tokenizer (right padding) and the CLIP tokenizer, fully offline.

    See `find_tokenizer_dir` for where they are looked for.

    Args:
        text_encoder1_path: the `--text_encoder1` path (tokenizer 1 is searched around it).
        text_encoder2_path: the `--text_encoder2` path.
        tokenizer1: explicit tokenizer 1 directory (`--tokenizer1`), wins over the search.
        tokenizer2: explicit tokenizer 2 directory (`--tokenizer2`).

    Returns:
        `(tokenizer1, tokenizer2)`.

    Raises:
        FramepackError: a tokenizer is missing or unreadable.
    """
    from transformers import AutoTokenizer, CLIPTokenizer

    d1 = find_tokenizer_dir(1, text_encoder1_path, tokenizer1)
    d2 = find_tokenizer_dir(2, text_encoder2_path, tokenizer2)
    try:
        with quiet_transformers():
            # AutoTokenizer, not LlamaTokenizerFast: transformers 5 rebuilds a SentencePiece-style pipeline
            # for the Llama class, while the Llama-3 tokenizer.json is byte-level BPE.
            tok1 = AutoTokenizer.from_pretrained(str(d1), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise FramepackError(f"{d1}: cannot load tokenizer 1 ({e})", hint="pass --tokenizer1 DIR") from None
    try:
        with quiet_transformers():
            tok2 = CLIPTokenizer.from_pretrained(str(d2), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise FramepackError(f"{d2}: cannot load tokenizer 2 ({e})", hint="pass --tokenizer2 DIR") from None
    tok1.padding_side = "right"  # the crop/slice logic assumes valid tokens first
    if tok1.pad_token is None:
        # Pad ids are never attended by valid (causal) positions and are sliced away; any id works.
        tok1.pad_token = tok1.eos_token
    return tok1, tok2
