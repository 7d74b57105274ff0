"""Dataset configs (`--dataset_config`): the reference trainer's TOML/JSON schema, validated up front.

Schema and value resolution follow training.md §1: a `[general]` table with the six "ascendable" keys and
`[[datasets]]` entries that are image datasets (`image_directory` / `image_jsonl_file`) or video datasets
(`video_directory` / `video_jsonl_file`); each value comes from the dataset, else `[general]`, else the
command line (`--batch_size`), else the default. Unknown keys and wrong types are errors.

`load_dataset_config` also finds every source (images, videos, frame folders, control images) and reads
every caption, so that a missing folder, an image without a caption or a video without a control is
reported before any model loads. All problems come back at once in one `FramepackError`, one line each,
naming the config file, the dataset and the key. The files themselves are listed and read by
`io.dataset_files`. Pydantic and the standard library only (no torch): `--help` and validation stay instant.

Relative paths: the working directory first (as in the reference), then the file that names them. A path
key of the config (`image_directory`, `video_directory`, `image_jsonl_file`, `video_jsonl_file`,
`control_directory`) that does not exist relative to the working directory is looked up relative to the
config's folder; a path in a JSONL line (`image_path`, `video_path`, `control_path*`) relative to the JSONL
file's folder. When neither exists the error names both places. `cache_directory` (an output that may not
exist yet): an existing folder is found the same way; a new one goes where its parent folder exists (the
working directory when both or neither have it, unless the dataset's sources were themselves found only
relative to the config: then beside them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from framepack_cli.errors import FramepackError
from framepack_cli.io.dataset_files import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    caption_file,
    find_video_control,
    list_images,
    list_videos,
    match_controls,
    read_caption,
    read_config_file,
    read_jsonl,
)
from framepack_cli.plan.frames import FRAME_EXTRACTIONS, effective_extraction, round_target_frames

ASCENDABLE_KEYS = ("caption_extension", "batch_size", "num_repeats", "resolution", "enable_bucket", "bucket_no_upscale")
DEFAULT_RESOLUTION = (960, 544)
DEPRECATED_KEYS = {
    "flux_kontext_no_resize_control": "no_resize_control",
    "qwen_image_edit_no_resize_control": "no_resize_control",
    "qwen_image_edit_control_resolution": "control_resolution",
}


# --------------------------------------------------------------------------------------------------
# Schema (strict: TOML types must match, unknown keys are errors)
# --------------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GeneralSection(_Strict):
    """`[general]`: only the keys every dataset may inherit."""

    caption_extension: str | None = None
    batch_size: int | None = Field(None, ge=1)
    num_repeats: int | None = Field(None, ge=1)
    resolution: int | list[int] | None = None
    enable_bucket: bool | None = None
    bucket_no_upscale: bool | None = None


class ImageSection(GeneralSection):
    """An `[[datasets]]` entry with `image_directory` or `image_jsonl_file`."""

    image_directory: str | None = None
    image_jsonl_file: str | None = None
    cache_directory: str | None = None
    control_directory: str | None = None
    multiple_target: bool | None = None
    fp_latent_window_size: int | None = Field(None, ge=1)
    fp_1f_clean_indices: list[int] | None = None
    fp_1f_target_index: int | None = Field(None, ge=0)
    fp_1f_no_post: bool | None = None
    no_resize_control: bool | None = None
    control_resolution: int | list[int] | None = None


class VideoSection(GeneralSection):
    """An `[[datasets]]` entry with `video_directory` or `video_jsonl_file`."""

    video_directory: str | None = None
    video_jsonl_file: str | None = None
    control_directory: str | None = None
    target_frames: list[int] | None = None
    frame_extraction: str | None = None
    frame_stride: int | None = Field(None, ge=1)
    frame_sample: int | None = Field(None, ge=1)
    max_frames: int | None = Field(None, ge=1)
    cache_directory: str | None = None
    # The reference only takes a TOML float (30 is refused, 30.0 accepted); an integer frame rate is
    # unambiguous, so both are accepted here.
    source_fps: float | None = Field(None, gt=0)
    fp_latent_window_size: int | None = Field(None, ge=1)


_TYPE_WORDS = {
    "caption_extension": 'a string such as ".txt"',
    "resolution": "an integer or a list [width, height] of two integers",
    "control_resolution": "an integer or a list [width, height] of two integers",
    "fp_1f_clean_indices": "a list of integers",
    "target_frames": "a list of integers",
    "source_fps": "a number such as 30.0",
    "frame_extraction": "one of " + ", ".join(FRAME_EXTRACTIONS),
}
for _k in ("batch_size", "num_repeats", "fp_latent_window_size", "fp_1f_target_index", "frame_stride",
           "frame_sample", "max_frames"):
    _TYPE_WORDS[_k] = "an integer"
for _k in ("enable_bucket", "bucket_no_upscale", "multiple_target", "fp_1f_no_post", "no_resize_control"):
    _TYPE_WORDS[_k] = "true or false"
for _k in ("image_directory", "image_jsonl_file", "cache_directory", "control_directory", "video_directory",
           "video_jsonl_file"):
    _TYPE_WORDS[_k] = "a path string"


def _describe(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    return f"{names.get(type(value), type(value).__name__)} {json.dumps(value, default=str)}"


def _schema_errors(model: type[BaseModel], data: dict, allowed_hint: str) -> tuple[Any, dict[str, str]]:
    """Validate `data`; returns (model or None, {key: message}) with one message per key."""
    try:
        return model(**data), {}
    except ValidationError as exc:
        out: dict[str, str] = {}
        for err in exc.errors():
            key = str(err["loc"][0])
            if key in out:
                continue  # a union yields one error per branch: the first says it all
            kind = err["type"]
            if kind == "extra_forbidden":
                if model is ImageSection and key in VideoSection.model_fields:
                    out[key] = "a video-dataset key, but this entry is an image dataset (it has image_directory " \
                               "or image_jsonl_file)"
                elif model is VideoSection and key in ImageSection.model_fields:
                    out[key] = "an image-dataset key, but this entry is a video dataset (it has video_directory " \
                               "or video_jsonl_file)"
                else:
                    out[key] = f"unknown key ({allowed_hint})"
            elif kind in ("greater_than_equal", "greater_than"):
                bound = err["ctx"].get("ge", err["ctx"].get("gt"))
                op = ">=" if kind == "greater_than_equal" else ">"
                out[key] = f"must be {op} {bound}, got {_describe(err['input'])}"
            else:
                out[key] = f"expected {_TYPE_WORDS.get(key, 'another type')}, got {_describe(data.get(key))}"
        return None, out


# --------------------------------------------------------------------------------------------------
# Resolved datasets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageItem:
    """One image of an image dataset.

    Attributes:
        path: the image file.
        caption: its caption: a caption file's text stripped, a JSONL line's as written (as in the reference,
            whose text caching encodes captions as they are, even empty).
        controls: control images in order (empty when the dataset has none).
    """

    path: Path
    caption: str
    controls: tuple[Path, ...] = ()

    @property
    def stem(self) -> str:
        """Name shared by its cache files."""
        return self.path.stem


@dataclass(frozen=True)
class VideoItem:
    """One source clip of a video dataset: a video file or a folder of frame images.

    Attributes:
        path: the video file or frame folder.
        caption: its caption (caption file: stripped; JSONL line: as written).
        control: its control clip, if the dataset has controls (loaded by nobody: FramePack ignores it).
    """

    path: Path
    caption: str
    control: Path | None = None

    @property
    def stem(self) -> str:
        """Name shared by its cache files."""
        return self.path.stem


@dataclass(frozen=True)
class _DatasetBase:
    index: int
    label: str
    resolution: tuple[int, int]
    caption_extension: str | None
    batch_size: int
    num_repeats: int
    enable_bucket: bool
    bucket_no_upscale: bool
    cache_directory: Path
    control_directory: Path | None
    fp_latent_window_size: int


@dataclass(frozen=True)
class ImageDataset(_DatasetBase):
    """A resolved image dataset (FramePack: one-frame training)."""

    image_directory: Path | None = None
    image_jsonl_file: Path | None = None
    fp_1f_clean_indices: tuple[int, ...] | None = None
    fp_1f_target_index: int | None = None
    fp_1f_no_post: bool = False
    items: tuple[ImageItem, ...] = ()
    kind: str = "image"


@dataclass(frozen=True)
class VideoDataset(_DatasetBase):
    """A resolved video dataset (FramePack: section training)."""

    video_directory: Path | None = None
    video_jsonl_file: Path | None = None
    target_frames: tuple[int, ...] = (1,)
    frame_extraction: str = "head"
    frame_stride: int = 1
    frame_sample: int = 1
    max_frames: int = 129
    source_fps: float | None = None
    items: tuple[VideoItem, ...] = ()
    kind: str = "video"


@dataclass(frozen=True)
class DatasetConfig:
    """A validated dataset config.

    Attributes:
        path: the config file.
        datasets: resolved datasets in file order.
        warnings: harmless oddities worth a line (renamed deprecated keys, rounded target_frames).
    """

    path: Path
    datasets: tuple[ImageDataset | VideoDataset, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def problem(self, dataset: ImageDataset | VideoDataset, key: str, message: str) -> str:
        """An error line in this loader's format, for checks made later (e.g. by the cache engine)."""
        return f"{self.path}: {dataset.label}: {key}: {message}"


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _rename_deprecated(table: dict, where: str, warnings: list[str]) -> dict:
    table = dict(table)
    for old, new in DEPRECATED_KEYS.items():
        if old in table:
            value = table.pop(old)
            if new in table:
                warnings.append(f"{where}: {old} ignored, {new} is set too")
            else:
                table[new] = value
                warnings.append(f"{where}: {old} is deprecated, read as {new}")
    return table


def _resolution(value: int | list[int]) -> tuple[int, int] | str:
    if isinstance(value, int):
        value = [value, value]
    if len(value) != 2:
        return f"expected an integer or [width, height], got an array of {len(value)} values"
    if value[0] <= 0 or value[1] <= 0:
        return f"width and height must be positive, got {value}"
    return int(value[0]), int(value[1])


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _tried(value: str, base: Path) -> str:
    """` (looked in <cwd>/<value> and <base>/<value>)`, or nothing when both are the same place."""
    p = Path(value)
    if p.is_absolute() or _same_dir(base, Path.cwd()):
        return ""
    return f" (looked in {os.path.abspath(p)} and {os.path.abspath(base / p)})"


def _locate(value: str, base: Path, test=Path.exists) -> Path | None:
    """A relative input path: as given (working directory) when `test` passes there, else below `base`."""
    p = Path(value)
    if test(p):
        return p
    if not p.is_absolute() and test(base / p):
        return base / p
    return None


def _locate_output(value: str, base: Path, beside_base: bool) -> Path:
    """Where a relative output folder (`cache_directory`) is: an existing folder as `_locate` finds it; a new
    one where its parent exists, the working directory when both or neither places have the parent, unless
    `beside_base` (the dataset's sources were found only relative to `base`)."""
    p = Path(value)
    if p.is_absolute() or _same_dir(base, Path.cwd()) or p.exists():
        return p
    alt = base / p
    if alt.exists():
        return alt
    here, there = p.parent.is_dir(), alt.parent.is_dir()
    if here != there:
        return p if here else alt
    return alt if beside_base else p


class _Ctx:
    """Collects error lines for one dataset in the loader's format."""

    def __init__(self, config: Path, label: str, errors: list[str]) -> None:
        self.config, self.label, self.errors = config, label, errors

    def err(self, key: str, message: str) -> None:
        self.errors.append(f"{self.config}: {self.label}: {key}: {message}")


def _jsonl_rows(c: _Ctx, key: str, jsonl: Path) -> list[tuple[int, dict]]:
    rows, problems = read_jsonl(jsonl)
    for problem in problems:
        c.err(key, problem)
    return rows


def _captioned_files(c: _Ctx, key: str, directory: Path, lister, extensions, noun: str,
                     caption_ext: str | None) -> list[tuple[Path, str]]:
    """The media files of a source directory with their captions; every problem goes to `c` (one line each)."""
    files = lister(directory)
    if not files:
        c.err(key, f"no {noun}s ({', '.join(extensions)}) in {directory}")
    if caption_ext is None and files:
        c.err("caption_extension", f"not set: the captions of {directory} are read from "
                                   f"<{noun} name><caption_extension>")
        return []
    out = []
    for f in files:
        cap_path = caption_file(f, caption_ext)
        caption = read_caption(cap_path)
        if caption is None:
            c.err("caption_extension", f"{f}: caption file {cap_path} not found or unreadable")
            continue
        out.append((f, caption))
    return out


def _image_items(c: _Ctx, source: Path, from_jsonl: bool, control_dir: Path | None, caption_ext: str | None,
                 control_count: int) -> list[ImageItem]:
    items: list[ImageItem] = []
    pool = list_images(control_dir) if control_dir is not None else None
    if not from_jsonl:
        for img, caption in _captioned_files(c, "image_directory", source, list_images, IMAGE_EXTENSIONS,
                                             "image", caption_ext):
            controls: list[Path] = []
            if pool is not None:
                controls = match_controls(img.stem, pool)
                if not controls:
                    c.err("control_directory",
                          f"{img}: no control image {img.stem}.* or {img.stem}_<n>.* in {control_dir}")
                    continue
                if len(controls) < control_count:
                    c.err("control_directory", f"{img}: {len(controls)} control image(s) in {control_dir}, "
                                               f"fp_1f_clean_indices needs {control_count}")
                    continue
                controls = controls[:control_count]
            items.append(ImageItem(img, caption, tuple(controls)))
        return items
    jsonl, base = source, source.parent
    rows = _jsonl_rows(c, "image_jsonl_file", jsonl)
    has_control = any(any(k == "control_path" or k.startswith("control_path_") for k in obj) for _, obj in rows)
    for n, obj in rows:
        where = f"{jsonl} line {n}"
        image = obj.get("image_path", obj.get("image_path_0"))
        caption = obj.get("caption")
        if not isinstance(image, str) or not isinstance(caption, str):
            c.err("image_jsonl_file", f"{where}: needs string entries \"image_path\" and \"caption\"")
            continue
        image_path = _locate(image, base, Path.is_file)
        if image_path is None:
            c.err("image_jsonl_file", f"{where}: image not found: {image}{_tried(image, base)}")
            continue
        controls_raw = {}
        if "control_path" in obj:
            controls_raw[0] = obj["control_path"]
        for k, v in obj.items():
            if k.startswith("control_path_") and k[len("control_path_"):].isdigit():
                controls_raw[int(k[len("control_path_"):])] = v
        controls = [controls_raw[k] for k in sorted(controls_raw)]
        if has_control:
            if len(controls) < control_count:
                c.err("image_jsonl_file", f"{where}: {len(controls)} control path(s), fp_1f_clean_indices needs "
                                          f"{control_count}")
                continue
            controls = controls[:control_count]
            found = [_locate(p, base, Path.is_file) if isinstance(p, str) else None for p in controls]
            bad = [p for p, f in zip(controls, found, strict=True) if f is None]
            if bad:
                tried = _tried(bad[0], base) if isinstance(bad[0], str) else ""
                c.err("image_jsonl_file", f"{where}: control image not found: {bad[0]}{tried}")
                continue
            controls = found
        items.append(ImageItem(image_path, caption, tuple(controls) if has_control else ()))
    if not rows and not c.errors:
        c.err("image_jsonl_file", f"{jsonl} lists no images")
    return items


def _video_items(c: _Ctx, source: Path, from_jsonl: bool, control_dir: Path | None,
                 caption_ext: str | None) -> list[VideoItem]:
    items: list[VideoItem] = []
    if not from_jsonl:
        for video, caption in _captioned_files(c, "video_directory", source, list_videos,
                                               VIDEO_EXTENSIONS, "video", caption_ext):
            control = None
            if control_dir is not None:
                control = find_video_control(video, control_dir)
                if control is None:
                    c.err("control_directory",
                          f"{video}: no control video or frame folder {video.stem} in {control_dir}")
                    continue
            items.append(VideoItem(video, caption, control))
        return items
    jsonl, base = source, source.parent
    rows = _jsonl_rows(c, "video_jsonl_file", jsonl)
    has_control = any("control_path" in obj for _, obj in rows)
    for n, obj in rows:
        where = f"{jsonl} line {n}"
        video, caption = obj.get("video_path"), obj.get("caption")
        if not isinstance(video, str) or not isinstance(caption, str):
            c.err("video_jsonl_file", f"{where}: needs string entries \"video_path\" and \"caption\"")
            continue
        video_path = _locate(video, base)
        if video_path is None:
            c.err("video_jsonl_file", f"{where}: video or frame folder not found: {video}{_tried(video, base)}")
            continue
        control = obj.get("control_path")
        control_path = None
        if has_control:
            if not isinstance(control, str):
                c.err("video_jsonl_file", f"{where}: control_path missing (every line needs one when any line has "
                                          "one)")
                continue
            control_path = _locate(control, base)
            if control_path is None:
                c.err("video_jsonl_file", f"{where}: control video or frame folder not found: {control}"
                                          f"{_tried(control, base)}")
                continue
        items.append(VideoItem(video_path, caption, control_path))
    if not rows and not c.errors:
        c.err("video_jsonl_file", f"{jsonl} lists no videos")
    return items


def _label(entry: dict, index: int) -> str:
    for key in ("image_directory", "image_jsonl_file", "video_directory", "video_jsonl_file"):
        if isinstance(entry.get(key), str):
            return f"datasets[{index}] ({key} = {entry[key]})"
    return f"datasets[{index}]"


def _resolve_dataset(
    index: int, entry: dict, general: GeneralSection | None, cli_batch_size: int | None, config: Path,
    errors: list[str], warnings: list[str],
) -> ImageDataset | VideoDataset | None:
    label = _label(entry, index)
    c = _Ctx(config, label, errors)
    entry = _rename_deprecated(entry, f"{config}: {label}", warnings)
    is_image = "image_directory" in entry or "image_jsonl_file" in entry
    is_video = "video_directory" in entry or "video_jsonl_file" in entry
    if is_image and is_video:
        c.err("image_directory", "a dataset is either an image dataset (image_directory / image_jsonl_file) or a "
                                 "video dataset (video_directory / video_jsonl_file), not both")
        return None
    if not is_image and not is_video:
        c.err("image_directory", "each [[datasets]] entry needs one of image_directory, image_jsonl_file, "
                                 "video_directory, video_jsonl_file")
        return None
    model = ImageSection if is_image else VideoSection
    kind = "image" if is_image else "video"
    allowed = f"allowed in {kind} datasets: " + ", ".join(model.model_fields)
    section, problems = _schema_errors(model, entry, allowed)
    for key, message in problems.items():
        c.err(key, message)
    if section is None:
        return None
    src_a, src_b = ("image_directory", "image_jsonl_file") if is_image else ("video_directory", "video_jsonl_file")
    if getattr(section, src_a) is not None and getattr(section, src_b) is not None:
        c.err(src_b, f"give either {src_a} or {src_b}, not both")
        return None

    def pick(key: str, default: Any) -> Any:
        for source in (section, general):
            value = getattr(source, key, None) if source is not None else None
            if value is not None:
                return value
        if key == "batch_size" and cli_batch_size is not None:
            return cli_batch_size
        return default

    res_value = pick("resolution", None)
    resolution = DEFAULT_RESOLUTION if res_value is None else _resolution(res_value)
    if isinstance(resolution, str):
        if section.resolution is not None:  # a bad [general] value is reported once, for [general]
            c.err("resolution", resolution)
        resolution = DEFAULT_RESOLUTION
    enable_bucket = pick("enable_bucket", False)
    if not enable_bucket and (resolution[0] % 16 or resolution[1] % 16):
        c.err("resolution", f"{resolution[0]}x{resolution[1]} without enable_bucket: width and height must be "
                            "multiples of 16 (the latent grid is 8 px and the DiT patches 2x2 latents)")
    caption_ext = pick("caption_extension", None)
    window = section.fp_latent_window_size or 9
    base = config.parent
    src_key = src_a if getattr(section, src_a) is not None else src_b
    src_value = getattr(section, src_key)
    source = _locate(src_value, base, Path.is_dir if src_key == src_a else Path.is_file)
    if source is None:
        noun = "folder" if src_key == src_a else "file"
        c.err(src_key, f"{noun} not found: {src_value}{_tried(src_value, base)}")
    beside_config = source is not None and source != Path(src_value)
    cache_dir: Path | None = None
    if section.cache_directory is not None:
        cache_dir = _locate_output(section.cache_directory, base, beside_config)
    elif src_key == src_a:
        cache_dir = source if source is not None else Path(src_value)
    if cache_dir is None:
        c.err("cache_directory", f"required for a {src_b} dataset (there is no folder to default to)")
    elif cache_dir.exists() and not cache_dir.is_dir():
        c.err("cache_directory", f"{cache_dir} exists and is not a folder")
    else:
        blocking = next((q for q in cache_dir.parents if q.exists() and not q.is_dir()), None)
        if blocking is not None:
            c.err("cache_directory", f"cannot create {cache_dir}: {blocking} is a file")
    control_dir: Path | None = None
    if section.control_directory is not None:
        control_dir = _locate(section.control_directory, base, Path.is_dir)
        if control_dir is None:
            c.err("control_directory", f"folder not found: {section.control_directory}"
                                       f"{_tried(section.control_directory, base)}")
    common = dict(
        index=index, label=label, resolution=resolution, caption_extension=caption_ext,
        batch_size=pick("batch_size", 1), num_repeats=pick("num_repeats", 1), enable_bucket=enable_bucket,
        bucket_no_upscale=bool(pick("bucket_no_upscale", False)) and enable_bucket,
        cache_directory=cache_dir if cache_dir is not None else Path("."),
        control_directory=control_dir, fp_latent_window_size=window,
    )
    if is_image:
        if section.multiple_target:
            c.err("multiple_target", "only for Qwen-Image-Layered datasets; FramePack has one target per image")
        for key in ("no_resize_control", "control_resolution"):
            if getattr(section, key):
                c.err(key, "not supported by FramePack: one-frame caching stacks the control images with the target, "
                           "so they are always resized to the target's bucket")
        clean = section.fp_1f_clean_indices
        if clean is not None and any(i < 0 for i in clean):
            c.err("fp_1f_clean_indices", f"indices must be >= 0, got {clean}")
        control_count = len(clean) if clean else 1
        from_jsonl = src_key == src_b
        items = [] if source is None else _image_items(c, source, from_jsonl, control_dir, caption_ext, control_count)
        return ImageDataset(
            **common, image_directory=None if from_jsonl else source or Path(src_value),
            image_jsonl_file=(source or Path(src_value)) if from_jsonl else None,
            fp_1f_clean_indices=tuple(clean) if clean is not None else None,
            fp_1f_target_index=section.fp_1f_target_index, fp_1f_no_post=bool(section.fp_1f_no_post),
            items=tuple(items),
        )
    targets_raw = section.target_frames if section.target_frames is not None else [1]
    if not targets_raw:
        c.err("target_frames", "must list at least one frame count")
        targets_raw = [1]
    if any(t < 1 for t in targets_raw):
        c.err("target_frames", f"frame counts must be >= 1, got {targets_raw}")
        targets_raw = [max(1, t) for t in targets_raw]
    targets = round_target_frames(targets_raw)
    if list(targets) != sorted(set(targets_raw)):
        warnings.append(f"{config}: {label}: target_frames {list(targets_raw)} rounded down to 4n+1: {list(targets)}")
    mode = section.frame_extraction or "head"
    if mode not in FRAME_EXTRACTIONS:
        c.err("frame_extraction", f"must be one of {', '.join(FRAME_EXTRACTIONS)}, got {mode!r}")
    sample = section.frame_sample or 1
    if effective_extraction(mode, sample) != mode:
        warnings.append(f"{config}: {label}: frame_extraction 'uniform' with frame_sample 1 is 'head'")
        mode = effective_extraction(mode, sample)
    from_jsonl = src_key == src_b
    items = [] if source is None else _video_items(c, source, from_jsonl, control_dir, caption_ext)
    return VideoDataset(
        **common, video_directory=None if from_jsonl else source or Path(src_value),
        video_jsonl_file=(source or Path(src_value)) if from_jsonl else None,
        target_frames=targets, frame_extraction=mode, frame_stride=section.frame_stride or 1, frame_sample=sample,
        max_frames=section.max_frames or 129,
        source_fps=float(section.source_fps) if section.source_fps is not None else None, items=tuple(items),
    )


def load_dataset_config(path: str | Path, *, batch_size: int | None = None) -> DatasetConfig:
    """Read, validate and resolve a dataset config.

    Args:
        path: the `.toml` or `.json` file.
        batch_size: `--batch_size` of the running command: the batch size of datasets that set none
            (neither in the entry nor in `[general]`), as in the reference.

    Returns:
        The resolved config with every source, caption and control found.

    Raises:
        FramepackError: every problem found, one line each (`<file>: <dataset>: <key>: <what>`).
    """
    config = Path(path)
    raw = read_config_file(config)
    errors: list[str] = []
    warnings: list[str] = []
    if not isinstance(raw, dict):
        raise FramepackError(f"{config}: expected a table with [general] and [[datasets]]")
    for key in raw:
        if key not in ("general", "datasets"):
            errors.append(f"{config}: {key}: unknown top-level key (only [general] and [[datasets]] are allowed)")
    general = None
    general_raw = raw.get("general", {})
    if not isinstance(general_raw, dict):
        errors.append(f"{config}: general: expected a table [general], got {_describe(general_raw)}")
    else:
        general_raw = _rename_deprecated(general_raw, f"{config}: [general]", warnings)
        hint = "[general] only takes " + ", ".join(ASCENDABLE_KEYS) + "; put other keys in each [[datasets]] entry"
        general, problems = _schema_errors(GeneralSection, general_raw, hint)
        errors += [f"{config}: [general]: {k}: {m}" for k, m in problems.items()]
        if general is not None and general.resolution is not None and isinstance(_resolution(general.resolution), str):
            errors.append(f"{config}: [general]: resolution: {_resolution(general.resolution)}")
    entries = raw.get("datasets")
    if not isinstance(entries, list) or not entries:
        errors.append(f"{config}: datasets: no [[datasets]] entries")
        entries = []
    cli_batch = batch_size
    datasets = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            errors.append(f"{config}: datasets[{i}]: expected a table, got {_describe(entry)}")
            continue
        ds = _resolve_dataset(i, entry, general, cli_batch, config, errors, warnings)
        if ds is not None:
            datasets.append(ds)
    _check_unique(config, datasets, errors)
    if errors:
        raise FramepackError("\n".join(errors))
    return DatasetConfig(config, tuple(datasets), tuple(warnings))


def source_key(ds: ImageDataset | VideoDataset) -> str:
    """The config key that names a dataset's sources (for error lines)."""
    if ds.kind == "image":
        return "image_directory" if ds.image_directory is not None else "image_jsonl_file"
    return "video_directory" if ds.video_directory is not None else "video_jsonl_file"


def dataset_identity(ds: ImageDataset | VideoDataset) -> str:
    """What a dataset's cache files record as the dataset they were made for (`framepack_cli.dataset`).

    A short hash of the source key and the source's real absolute path (not the path itself, so caches do
    not carry folder names): the same for every run over the same images or videos, whatever the working
    directory or the config file.
    """
    import hashlib

    key = source_key(ds)
    source = getattr(ds, key)
    try:
        where = str(Path(source).resolve())
    except OSError:
        where = os.path.abspath(source)
    return hashlib.sha256(f"{key}={where}".encode()).hexdigest()[:16]


def _check_unique(config: Path, datasets: list, errors: list[str]) -> None:
    seen: dict[Path, str] = {}
    for ds in datasets:
        key = ds.cache_directory.resolve()
        if key in seen:
            errors.append(f"{config}: {ds.label}: cache_directory: {ds.cache_directory} is also the cache of "
                          f"{seen[key]}; every dataset needs its own")
        else:
            seen[key] = ds.label
        stems: dict[str, Path] = {}
        for item in ds.items:
            other = stems.setdefault(item.stem, item.path)
            if other != item.path:
                errors.append(f"{config}: {ds.label}: {source_key(ds)}: {other} and {item.path} share the name "
                              f"{item.stem!r}, so their caches would overwrite each other; rename one")
