"""`--memory auto` / `--blocks_to_swap auto` in a run: the real numbers into the pure planner
(`framepack_cli.engine.memory_plan`), its choice into the options, before any model loads.

Explicit flags win: what the user gave (`--fp8`, `--fp8_scaled`, a number for `--blocks_to_swap`, any VAE
chunk/tile flag) is kept and only the rest is chosen.
"""

from __future__ import annotations

from framepack_cli.engine import memory_plan as mp

VAE_FLAGS = ("vae_chunk_size", "vae_tiling", "vae_spatial_tile_sample_min_size")


def _given_fp8(opts):
    return "fp8_scaled" if opts.fp8_scaled else "fp8" if opts.fp8 else None


def request_of(opts, sections: int) -> mp.Request:
    h, w = opts.video_size
    one_frame = opts.one_frame_inference is not None
    return mp.Request(h, w, opts.latent_window_size, sections, one_frame,
                      clean_images=max(len(opts.control_image_path or []), 1), batch=1,
                      bulk_decode=opts.bulk_decode, decode=getattr(opts, "decode", None))


def largest_request(jobs: list[tuple[str, object, int]]) -> tuple[str, mp.Request] | None:
    """The job that needs the most memory, as (its label, its `Request`): the most DiT tokens per section,
    then the most decoded pixels per chunk, then the most sections. `jobs`: (label, options, sections)."""
    best = None
    for label, opts, sections in jobs:
        req = request_of(opts, sections)
        key = (req.tokens * req.batch, req.decode_frames * req.height * req.width, req.sections)
        if best is None or key > best[0]:
            best = (key, label, req)
    return None if best is None else (best[1], best[2])


def apply_memory_plan(opts, found: dict, precision, device, sink, sections: int, *, host_bytes: int = 0,
                      free_vram: int | None = None, total_ram: int | None = None,
                      largest: tuple[str, mp.Request] | None = None):
    """The options with the planner's choice applied (or as they are); says the choice in one line.

    Args:
        found: `preflight`'s headers (`{kind: (path, infos, prefix)}`), for the DiT's and the VAE's sizes.
        sections: the planned section count; host_bytes: models kept in CPU RAM while the DiT runs.
        free_vram / total_ram: injected numbers (None = asked from the device and /proc/meminfo).
        largest: `--from_file`: (label, request) of the largest job (`largest_request`), planned for instead
            of `opts` (the models load once for every job), and named in the line.

    Raises:
        ResourceError: nothing fits even with everything on (exit 3, with what would help).
    """
    fields = opts.model_fields_set
    swap_auto = opts.blocks_to_swap == "auto"
    cuda = getattr(device, "type", "") == "cuda"
    mode = opts.memory or ("auto" if cuda else "none")
    if not cuda:
        if opts.memory == "auto" or swap_auto:
            asked = "--memory auto" if opts.memory == "auto" else "--blocks_to_swap auto"
            sink.message(f"Memory: {asked} does nothing on {device} (every model runs in RAM; nothing to plan)")
        return opts.model_copy(update={"blocks_to_swap": 0}) if swap_auto else opts
    if mode == "none" and not swap_auto:
        return opts
    from framepack_cli.engine.resources import device_memory, ram

    if free_vram is None:
        free_vram = device_memory(device)[0]
    if total_ram is None:
        total_ram = ram()[1]
    if free_vram is None or "dit" not in found:
        return opts.model_copy(update={"blocks_to_swap": 0}) if swap_auto else opts
    path, infos, prefix = found["dit"]
    size = mp.dit_size(infos, prefix)
    vae = 0
    if "vae" in found:
        _, vinfos, vprefix = found["vae"]
        vae = mp.vae_bytes(vinfos, vprefix, precision.vae.itemsize)
    given: list[str] = []
    if mode == "none":  # --blocks_to_swap auto alone: everything else as given
        fixed = mp.Fixed(fp8=_given_fp8(opts), vae=_vae_as_given(opts))
    else:
        fp8 = _given_fp8(opts) if {"fp8", "fp8_scaled"} & fields else False
        swap = opts.blocks_to_swap if "blocks_to_swap" in fields and not swap_auto else None
        vae_fixed = _vae_as_given(opts) if set(VAE_FLAGS) & fields else None
        fixed = mp.Fixed(fp8=fp8, blocks_to_swap=swap, vae=vae_fixed)
        given += [f"--{f}" for f in ("fp8", "fp8_scaled") if f in fields and getattr(opts, f)]
        if swap is not None:
            given.append(f"--blocks_to_swap {swap}")
        given += [f"--{f}" if getattr(opts, f) is True else f"--{f} {getattr(opts, f)}"
                  for f in VAE_FLAGS if f in fields and getattr(opts, f)]
    req = request_of(opts, sections) if largest is None else largest[1]
    plan = mp.plan_memory(
        size, req, free_vram=free_vram, total_ram=total_ram,
        dtype=str(precision.dit).removeprefix("torch."), vae=vae, vae_dtype=str(precision.vae).removeprefix("torch."),
        host_bytes=host_bytes, fixed=fixed, can_fp8=True, max_swap=mp.MAX_SWAP, given=tuple(given),
        pinned=bool(getattr(opts, "use_pinned_memory_for_block_swap", False)))
    if not plan.fits:
        if not given and mode == "auto":
            raise plan.error(str(device))
        sink.message(f"Warning: {plan.error(str(device)).message} (running anyway with the flags as given)")
    elif largest is not None:
        sink.message(f"{plan.line[:-1]}; planned for the largest job, {largest[0]}: {req.height}x{req.width}, "
                     f"{req.sections} section{'s' if req.sections != 1 else ''})")
    else:
        sink.message(plan.line)
    updates = plan.updates()
    if fixed.fp8 is not False:
        updates.pop("fp8"), updates.pop("fp8_scaled")
    if fixed.blocks_to_swap is not None:
        updates.pop("blocks_to_swap")
    if fixed.vae is not None:
        updates.pop("vae_chunk_size"), updates.pop("vae_spatial_tile_sample_min_size")
    return opts.model_copy(update=updates)


def _vae_as_given(opts) -> tuple[int | None, int | None]:
    tile = opts.vae_spatial_tile_sample_min_size or (256 if opts.vae_tiling else None)
    return opts.vae_chunk_size, tile
