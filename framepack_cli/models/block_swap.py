"""Block swap (`--blocks_to_swap N`): some DiT blocks keep their Linear weights in CPU memory and are copied
to the GPU one block ahead of their use, so a model larger than the GPU runs.

Two layers:

* The schedule (pure, no device): which blocks are swapped (`split_blocks`, the reference's choice: the
  *last* `N // 2` dual-stream blocks and the last `(N - N // 2) * 2 + 1` single-stream blocks, a dual block
  being about 2.4x a single one), and for an order of block uses (a forward, or a forward then its backward)
  the ordered list of events `prefetch j` / `compute i` / `evict k` (`schedule`). The rule: after each use,
  the swapped blocks among the next two distinct blocks to be used are the ones on the device; everything
  else is evicted first, then the missing ones are prefetched. So a swapped block is on the device (or its
  copy in flight) when it is used, the copy of the next block overlaps the current block, and never more
  than `SLOTS` (2) swapped blocks are on the device at once.
* The executor (`BlockSwapper`): swapped blocks' Linear weights live in one flat host buffer per block
  (optionally pinned); the device holds `SLOTS` flat byte buffers, each as large as the largest swapped
  block. A prefetch copies a block's buffer into a free slot on a side stream and points the block's
  weights (`param.data`) at views into the slot; an evict points them back at the host copy and records an
  event on the compute stream after which the slot may be overwritten. Weights never change (inference, or
  training a LoRA on a frozen base), so nothing is ever copied back to the host. All stream/event calls sit
  behind a transfer object (`CudaTransfer`), so tests drive the same executor with a fake one on the CPU.

`--block_swap_h2d_only` (training, the reference's `LoRAStreamOffloader`): the same counts per block list, but
the streamed blocks are spread evenly over each list (`streamed_positions`: more resident compute between two
copies), each list has its own ring of `--block_swap_ring_size` device slots (`ring_slots`; the k-th streamed
block of a list always uses slot k mod ring), and a slot is only overwritten when the next block that needs it
comes (`ring_schedule`): after a streamed block is used, the next user of its slot is copied in, so with a
ring of 2 the copy of the next streamed block overlaps the current one, the last blocks of a forward are still
on the device when its backward starts and the first ones when the next step begins (no copies at the
turn-arounds). A ring of 1 uses the least memory and overlaps nothing.

Why not diffusers 0.42's `enable_group_offload`: it offloads *every* block of every top-level ModuleList
(no "N swapped, the rest resident"), moves the top-level modules back to the CPU after every forward, and
its prefetch order is traced from the first forward only, so in a training backward (blocks needed again in
reverse) it prefetches the wrong way and, without activation checkpointing, leaves weights saved for
backward pointing at host memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

SLOTS = 2  # device buffers for swapped blocks: the block being computed and the one being copied in
ALIGN = 256  # byte alignment of each weight inside a flat buffer (valid for any dtype view)


# --------------------------------------------------------------------------------------------------
# Which blocks are swapped
# --------------------------------------------------------------------------------------------------


def split_blocks(num_dual: int, num_single: int, n: int) -> tuple[int, int]:
    """How many dual-stream and single-stream blocks `--blocks_to_swap n` swaps: the reference's split
    (`n // 2` dual, `(n - n // 2) * 2 + 1` single), each capped so that one block of each list stays on the
    device (the reference's own limit). For the real model (20 + 40 blocks) the caps are reached at n = 38:
    N=10 -> (5, 11), N=20 -> (10, 21), N=36 -> (18, 37), N=38 -> (19, 39). n = 0 swaps nothing."""
    if n <= 0:
        return 0, 0
    dual = n // 2
    single = (n - dual) * 2 + 1
    return min(dual, max(num_dual - 1, 0)), min(single, max(num_single - 1, 0))


def max_blocks_to_swap(num_dual: int, num_single: int) -> int:
    """The largest useful `--blocks_to_swap` for a model: the smallest n at which `split_blocks` reaches its
    caps (38 for the real 20 + 40 block model; 2 for a 2 + 2 block model)."""
    cap = split_blocks(num_dual, num_single, 10**6)
    n = 0
    while split_blocks(num_dual, num_single, n) != cap:
        n += 1
    return n


def swapped_positions(num_dual: int, num_single: int, n: int) -> frozenset[int]:
    """Positions in the forward order (dual blocks 0.., then single blocks num_dual..) of the swapped blocks:
    the last blocks of each list."""
    dual, single = split_blocks(num_dual, num_single, n)
    total = num_dual + num_single
    return frozenset([*range(num_dual - dual, num_dual), *range(total - single, total)])


def _spaced(count: int, s: int) -> list[int]:
    """`s` indices spread evenly over `count` (the midpoints of s equal parts; distinct for s <= count)."""
    return sorted({((2 * i + 1) * count) // (2 * s) for i in range(s)}) if s > 0 else []


def streamed_positions(num_dual: int, num_single: int, n: int) -> frozenset[int]:
    """`--block_swap_h2d_only`: positions of the streamed blocks, as many per list as `split_blocks` gives,
    spread evenly over each list (the reference's placement, block (2i + 1) * L // (2S) of a list of L)."""
    dual, single = split_blocks(num_dual, num_single, n)
    return frozenset([*_spaced(num_dual, dual), *(num_dual + j for j in _spaced(num_single, single))])


def ring_slots(num_dual: int, streamed: frozenset[int] | set[int], ring_size: int) -> dict[int, int]:
    """Block position -> device slot for `--block_swap_ring_size ring_size`: each block list has its own ring
    of min(ring_size, its streamed blocks) slots (the dual-stream list's first), and the k-th streamed block
    of a list uses slot k mod ring."""
    if ring_size < 1:
        raise ValueError("--block_swap_ring_size must be at least 1")
    out: dict[int, int] = {}
    base = 0
    for part in (sorted(b for b in streamed if b < num_dual), sorted(b for b in streamed if b >= num_dual)):
        ring = min(ring_size, len(part))
        for k, b in enumerate(part):
            out[b] = base + k % ring
        base += ring
    return out


# --------------------------------------------------------------------------------------------------
# The schedule
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One step of a schedule: `compute` uses block `block` (position `step` in the order of uses);
    `prefetch` starts copying a swapped block to the device; `evict` gives its slot back."""

    kind: Literal["prefetch", "compute", "evict"]
    block: int
    step: int = -1  # the use index, for `compute` only
    slot: int = -1  # the device slot, for `prefetch` only


def forward_order(num_blocks: int) -> list[int]:
    return list(range(num_blocks))


def training_order(num_blocks: int) -> list[int]:
    """A forward, then its backward (blocks needed again in reverse order)."""
    return [*range(num_blocks), *reversed(range(num_blocks))]


def _window(order: Sequence[int], start: int, swapped: frozenset[int], size: int) -> list[int]:
    """The swapped blocks among the next `size` distinct blocks used from `order[start]` on, in use order."""
    seen: list[int] = []
    for b in order[start:]:
        if b not in seen:
            seen.append(b)
            if len(seen) == size:
                break
    return [b for b in seen if b in swapped]


def schedule(order: Sequence[int], swapped: frozenset[int] | set[int], slots: int = SLOTS) -> list[Event]:
    """The events that run `order` (block uses) with `swapped` blocks off the device.

    Before use p the swapped blocks among the next `slots` distinct blocks (from use p on) are on the
    device: evictions first, then prefetches in use order. With `slots` = 2 that is "one block ahead": while
    block order[p] computes, the copy of the next swapped block is in flight. After the last use every
    swapped block is evicted.

    A swapped block always goes to the same slot (its rank among the swapped blocks, modulo `slots`): a
    training backward without activation checkpointing reads the weights that the forward saved, which
    are views of that slot, so the block must be back in it (and nothing else) when its backward runs.
    Two blocks on the device together are next to each other in the order, so their ranks are consecutive
    and their slots differ.
    """
    swapped = frozenset(swapped)
    if slots < 1:
        raise ValueError("block swap needs at least one device slot")
    rank = {b: i for i, b in enumerate(sorted(swapped))}
    events: list[Event] = []
    loaded: dict[int, int] = {}  # block -> slot

    def settle(target: list[int]) -> None:
        for b in [b for b in loaded if b not in target]:
            del loaded[b]
            events.append(Event("evict", b))
        for b in target:
            if b not in loaded:
                slot = rank[b] % slots
                if slot in loaded.values():
                    raise ValueError(f"block {b} needs slot {slot}, which is in use")
                loaded[b] = slot
                events.append(Event("prefetch", b, slot=slot))

    for p, b in enumerate(order):
        settle(_window(order, p, swapped, slots))
        events.append(Event("compute", b, p))
    settle([])
    return events


def _next_user(order: Sequence[int], after: int, slot: int, slot_of: dict[int, int]) -> int:
    """The next block (after use `after`, wrapping around into the next pass) that needs `slot`."""
    n = len(order)
    for k in range(1, n + 1):
        b = order[(after + k) % n]
        if slot_of.get(b) == slot:
            return b
    raise ValueError(f"no block uses slot {slot}")


def ring_head(order: Sequence[int], slot_of: dict[int, int], resident: dict[int, int] | None = None) -> list[Event]:
    """The events before the first use of a ring pass: each slot gets its first user of `order`, unless it
    already holds it (`resident`: slot -> block, what the previous pass left)."""
    resident = dict(resident or {})
    events: list[Event] = []
    first: dict[int, int] = {}
    for b in order:
        if b in slot_of and slot_of[b] not in first:
            first[slot_of[b]] = b
    for slot, b in first.items():
        if resident.get(slot) == b:
            continue
        if slot in resident:
            events.append(Event("evict", resident[slot]))
        events.append(Event("prefetch", b, slot=slot))
    return events


def ring_schedule(order: Sequence[int], slot_of: dict[int, int],
                  resident: dict[int, int] | None = None) -> tuple[list[Event], dict[int, int]]:
    """`--block_swap_h2d_only`: the events that run `order` (block uses) with the blocks of `slot_of` streamed
    through their fixed device slots, for a pass that is repeated (every training step runs the same order).

    A slot keeps its block until the block's use is over and the next block that needs the slot is not the
    same one; then that next user (looking past the end of `order` into the next pass) is copied in at once.
    So a ring of two slots per list copies the next streamed block while the current one computes, keeps the
    last blocks of a forward for the backward that follows, and loads the next pass's first blocks during
    the end of this one. `resident` (slot -> block) is what the previous pass left; returns the events and
    what this pass leaves."""
    loaded: dict[int, int] = dict(resident or {})  # slot -> block
    events = ring_head(order, slot_of, loaded)
    for e in events:
        if e.kind == "prefetch":
            loaded[e.slot] = e.block
    for p, b in enumerate(order):
        events.append(Event("compute", b, p))
        if b not in slot_of:
            continue
        slot = slot_of[b]
        nxt = _next_user(order, p, slot, slot_of)
        if nxt != b:
            events.append(Event("evict", b))
            events.append(Event("prefetch", nxt, slot=slot))
            loaded[slot] = nxt
    return events, loaded


def steps_of(events: Sequence[Event]) -> tuple[list[Event], list[list[Event]]]:
    """Split a schedule at its compute events: (events before the first use, events after each use)."""
    head: list[Event] = []
    after: list[list[Event]] = []
    for e in events:
        if e.kind == "compute":
            after.append([])
        elif after:
            after[-1].append(e)
        else:
            head.append(e)
    return head, after


# --------------------------------------------------------------------------------------------------
# Transfers (the only place with CUDA stream/event calls)
# --------------------------------------------------------------------------------------------------


class CudaTransfer:
    """Host-to-device copies on a side stream, ordered with the compute stream by CUDA events.

    From pinned host memory a copy is asynchronous and is issued from the calling thread. From pageable
    memory the CUDA driver copies synchronously (the host waits until the side stream reaches the copy,
    which waits for the slot's last use), so those copies are issued from one worker thread and the compute
    thread only waits for them when it needs the block.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        self._worker = None

    def device_buffer(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def host_buffer(self, nbytes: int, pinned: bool) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)

    def _issue(self, dst: torch.Tensor, src: torch.Tensor, after: Any) -> Any:
        with torch.cuda.stream(self.stream):
            if after is not None:
                self.stream.wait_event(after)  # the slot's previous block is done with it
            dst.copy_(src, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        return done

    def copy(self, dst: torch.Tensor, src: torch.Tensor, after: Any) -> Any:
        """Start copying `src` (host) into `dst` (a slot) once the compute stream passed `after` (the slot's
        last use); returns what `wait` takes."""
        if src.is_pinned():
            return self._issue(dst, src, after)
        if self._worker is None:
            from concurrent.futures import ThreadPoolExecutor

            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="framepack-block-swap")
        return self._worker.submit(self._issue, dst, src, after)

    def wait(self, done: Any) -> None:
        """Make the compute stream wait for a copy (the host waits only for a pageable copy to be issued)."""
        if hasattr(done, "result"):
            done = done.result()
        torch.cuda.current_stream(self.device).wait_event(done)

    def release(self, slot: torch.Tensor) -> Any:
        """The slot's block is done: an event on the compute stream after its last kernels."""
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(self.device))
        return ev

    def offloaded(self, host_view: torch.Tensor) -> torch.Tensor:
        return host_view

    def synchronize(self) -> None:
        self.stream.synchronize()


# --------------------------------------------------------------------------------------------------
# The executor
# --------------------------------------------------------------------------------------------------


def swap_weights(block: nn.Module) -> list[nn.Parameter]:
    """The tensors a swapped block keeps off the device: every Linear's `.weight` (as in the reference;
    biases, norms and scale buffers stay on the device)."""
    out: list[nn.Parameter] = []
    for m in block.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and (isinstance(m, nn.Linear) or type(m).__name__.endswith("Linear")):
            out.append(w)
    return out


def _layout(weights: Sequence[torch.Tensor]) -> tuple[list[int], int]:
    offsets, total = [], 0
    for w in weights:
        total = -(-total // ALIGN) * ALIGN
        offsets.append(total)
        total += w.numel() * w.element_size()
    return offsets, total


def _views(flat: torch.Tensor, weights: Sequence[torch.Tensor], offsets: Sequence[int]) -> list[torch.Tensor]:
    return [flat[o : o + w.numel() * w.element_size()].view(w.dtype).view(w.shape)
            for o, w in zip(offsets, weights, strict=True)]


class BlockSwapper:
    """Runs a block loop with some blocks' Linear weights off the device (see the module docstring).

    Args:
        blocks: every block, in forward order.
        swapped: positions (indices into `blocks`) of the swapped blocks.
        transfer: `CudaTransfer` (or a test double with the same methods).
        pinned: host copies in page-locked memory (`--use_pinned_memory_for_block_swap`): faster,
            asynchronous copies, at the cost of that much non-pageable RAM.
    """

    def __init__(self, blocks: Sequence[nn.Module], swapped: frozenset[int], transfer: Any, *,
                 pinned: bool = False, slot_map: dict[int, int] | None = None) -> None:
        self.blocks = list(blocks)
        self.swapped = frozenset(swapped)
        self.transfer = transfer
        self.pinned = pinned
        n = len(self.blocks)
        self.orders = {"forward": forward_order(n), "training": training_order(n)}
        # slot_map given: `--block_swap_h2d_only`'s rings (`ring_schedule`, blocks stay until their slot is
        # needed); else the plain schedule (`schedule`, every swapped block leaves after its use).
        self.ring = slot_map is not None
        if slot_map is None:
            rank = {b: i for i, b in enumerate(sorted(self.swapped))}
            slot_map = {b: rank[b] % SLOTS for b in self.swapped}
            self.plans = {k: steps_of(schedule(o, self.swapped)) for k, o in self.orders.items()}
        else:
            self.plans = {k: steps_of(ring_schedule(o, slot_map)[0]) for k, o in self.orders.items()}
        self.slot_map = dict(slot_map)
        self.weights: dict[int, list[torch.Tensor]] = {}
        self.offsets: dict[int, list[int]] = {}
        self.host: dict[int, torch.Tensor] = {}
        self.host_views: dict[int, list[torch.Tensor]] = {}
        self.slots: list[torch.Tensor] = []
        self.slot_free: list[Any] = []  # event after which a slot may be overwritten
        self.slot_of: dict[int, int] = {}
        self.ready: dict[int, Any] = {}
        self.mode = "forward"
        self.cursor = -1
        self.log: list[Event] = []  # what ran, for tests and debugging (bounded by `reset`)

    @property
    def bytes_per_block(self) -> dict[int, int]:
        return {b: _layout(w)[1] for b, w in self.weights.items()}

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Put swapped blocks' Linear weights into host buffers and everything else of `model` on `device`
        (the model comes from the CPU; no second full copy is made: one block at a time)."""
        keep: set[int] = set()
        size: dict[int, int] = {}  # slot -> bytes: the largest block using it
        for b in sorted(self.swapped):
            ws = swap_weights(self.blocks[b])
            offsets, total = _layout(ws)
            flat = self.transfer.host_buffer(total, self.pinned)
            views = _views(flat, ws, offsets)
            for w, v in zip(ws, views, strict=True):
                v.copy_(w.data)
                w.data = self.transfer.offloaded(v)
                keep.add(id(w))
            self.weights[b], self.offsets[b], self.host[b], self.host_views[b] = ws, offsets, flat, views
            size[self.slot_map[b]] = max(size.get(self.slot_map[b], 0), total)
        for t in (*model.parameters(), *model.buffers()):
            if id(t) not in keep and t.device != device:
                t.data = t.data.to(device)
        if self.swapped:
            self.slots = [self.transfer.device_buffer(size.get(i, 0)) for i in range(max(size) + 1)]
            self.slot_free = [None] * len(self.slots)
        self.slot_views: dict[tuple[int, int], list[torch.Tensor]] = {}

    # -- primitive moves -----------------------------------------------------------------------------
    def _prefetch(self, b: int) -> None:
        if b in self.slot_of:
            return
        s = self.slot_map[b]
        for other, slot in list(self.slot_of.items()):
            if slot == s:  # plain mode: only off the planned order (a backward that skipped blocks)
                self._evict(other)
        self.ready[b] = self.transfer.copy(self.slots[s][: _layout(self.weights[b])[1]], self.host[b],
                                           self.slot_free[s])
        key = (s, b)
        if key not in self.slot_views:
            self.slot_views[key] = _views(self.slots[s], self.weights[b], self.offsets[b])
        for w, v in zip(self.weights[b], self.slot_views[key], strict=True):
            w.data = v
        self.slot_of[b] = s
        self.log.append(Event("prefetch", b))

    def _evict(self, b: int) -> None:
        s = self.slot_of.pop(b, None)
        if s is None:
            return
        for w, v in zip(self.weights[b], self.host_views[b], strict=True):
            w.data = self.transfer.offloaded(v)
        self.slot_free[s] = self.transfer.release(self.slots[s])
        self.ready.pop(b, None)
        self.log.append(Event("evict", b))

    def _run(self, events: Sequence[Event]) -> None:
        for e in events:
            (self._prefetch if e.kind == "prefetch" else self._evict)(e.block)

    # -- the loop's calls ----------------------------------------------------------------------------
    def begin(self, training: bool) -> None:
        """A forward starts (`training`: its backward will follow)."""
        self.mode = "training" if training else "forward"
        self.cursor = -1
        if self.ring:  # what the last pass left stays; only the slots that hold another block change
            self.log.clear()
            resident = {s: b for b, s in self.slot_of.items()}
            self._run(ring_head(self.orders[self.mode], self.slot_map, resident))
        else:
            self.reset()
            self._run(self.plans[self.mode][0])

    def enter(self, step: int) -> None:
        """Use number `step` of the current order is about to run: its block must be on the device."""
        b = self._block_at(step)
        self.cursor = step
        if b in self.swapped:
            self._prefetch(b)  # a no-op when the plan prefetched it (the normal case)
            self.transfer.wait(self.ready[b])
        self.log.append(Event("compute", b, step))

    def leave(self, step: int) -> None:
        """Use number `step` was launched: evict / prefetch as planned."""
        self._run(self.plans[self.mode][1][step])

    def _block_at(self, step: int) -> int:
        n = len(self.blocks)
        return step if step < n else 2 * n - 1 - step

    def reset(self) -> None:
        """Every swapped block off the device (the end of a pass, or a backward that stopped early)."""
        for b in list(self.slot_of):
            self._evict(b)
        self.log.clear()


# --------------------------------------------------------------------------------------------------
# Backward markers
# --------------------------------------------------------------------------------------------------


class _Mark(torch.autograd.Function):
    """Identity on the two token streams; its backward tells the swapper that the backward of the blocks
    after it is done (all their weight uses launched) and the block before it comes next."""

    @staticmethod
    def forward(ctx, swapper: BlockSwapper, done: int, nxt: int, tokens: torch.Tensor,  # type: ignore[override]
                context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.swapper, ctx.done, ctx.nxt = swapper, done, nxt
        return tokens.view_as(tokens), context.view_as(context)

    @staticmethod
    def backward(ctx, g_tokens: torch.Tensor, g_context: torch.Tensor):  # type: ignore[override]
        sw: BlockSwapper = ctx.swapper
        if ctx.done >= 0:
            sw.leave(ctx.done)
        if ctx.nxt >= 0:
            sw.enter(ctx.nxt)
        return None, None, None, g_tokens, g_context


def mark(swapper: BlockSwapper, done: int, nxt: int, tokens: torch.Tensor,
         context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Insert a backward marker: when gradients reach it, use `done` is finished and use `nxt` begins
    (-1: none). Without gradients it is the identity."""
    if not (torch.is_grad_enabled() and (tokens.requires_grad or context.requires_grad)):
        return tokens, context
    return _Mark.apply(swapper, done, nxt, tokens, context)


# --------------------------------------------------------------------------------------------------
# Model-level entry points
# --------------------------------------------------------------------------------------------------

NO_CUDA_WARNING = ("Warning: --blocks_to_swap {n}: block swap needs a CUDA GPU; on {device} every block stays "
                   "in memory as usual (same results)")


def swap_supported(device: torch.device) -> bool:
    """Block swap runs on CUDA devices; elsewhere `--blocks_to_swap` is accepted with `NO_CUDA_WARNING`."""
    return device.type == "cuda"


def check_blocks_to_swap(n: int, num_dual: int, num_single: int, flag: str = "--blocks_to_swap") -> None:
    """`n` fits the model; else one line naming the model's block counts and the largest value (exit 2)."""
    from framepack_cli.errors import FramepackError

    top = max_blocks_to_swap(num_dual, num_single)
    if n > top:
        raise FramepackError(
            f"{flag} {n}: this DiT has {num_dual + num_single} blocks ({num_dual} dual-stream + {num_single} "
            f"single-stream) and one of each kind stays on the GPU, so at most {top} can be given; use {flag} "
            f"{top} or less")


def enable_block_swap(model: nn.Module, n: int, device: torch.device, *, pinned: bool = False,
                      transfer: Any = None, ring_size: int | None = None) -> BlockSwapper:
    """Swap `n` blocks of a FramePack DiT (`transformer_blocks`, `single_transformer_blocks`) that sits on the
    CPU; everything else goes to `device`. The model's block loop then calls the swapper
    (`model.block_swapper`). `ring_size`: `--block_swap_h2d_only` with that many device slots per block
    list (evenly spaced streamed blocks, kept until their slot is needed). Returns the swapper."""
    dual, single = list(model.transformer_blocks), list(model.single_transformer_blocks)
    check_blocks_to_swap(n, len(dual), len(single))
    slot_map = None
    if ring_size is None:
        swapped = swapped_positions(len(dual), len(single), n)
    else:
        swapped = streamed_positions(len(dual), len(single), n)
        slot_map = ring_slots(len(dual), swapped, ring_size)
    if transfer is None:
        transfer = CudaTransfer(device)
    sw = BlockSwapper([*dual, *single], swapped, transfer, pinned=pinned, slot_map=slot_map)
    sw.setup(model, device)
    model.block_swapper = sw
    return sw


def describe(num_dual: int, num_single: int, n: int, pinned: bool, ring_size: int | None = None) -> str:
    """The line a run prints when block swap is on (`ring_size`: `--block_swap_h2d_only`)."""
    dual, single = split_blocks(num_dual, num_single, n)
    where = f"stay in {'pinned ' if pinned else ''}CPU memory"
    if ring_size is None:
        return (f"Block swap: {dual} of {num_dual} dual-stream and {single} of {num_single} single-stream DiT "
                f"blocks {where} and are copied to the GPU one block ahead")
    rings = f"{min(ring_size, dual)} + {min(ring_size, single)}" if dual else f"{min(ring_size, single)}"
    return (f"Block swap (host-to-device only): {dual} of {num_dual} dual-stream and {single} of {num_single} "
            f"single-stream DiT blocks, evenly spaced, {where} and stream through {rings} GPU slots "
            f"(--block_swap_ring_size {ring_size} per block list)")


def _block_of(key: str) -> tuple[str, int] | None:
    for name in ("single_transformer_blocks.", "transformer_blocks."):
        if key.startswith(name):
            return name, int(key[len(name):].split(".", 1)[0])
    return None


def device_bytes_saved(shapes: dict[str, tuple[int, ...]], n: int, itemsize: int) -> int:
    """GPU bytes that `--blocks_to_swap n` takes off a DiT given its tensor shapes (unprefixed keys): the
    swapped blocks' Linear weights (2-D `.weight` tensors) at `itemsize` bytes each, less the `SLOTS` device
    buffers, each the size of the largest swapped block."""
    counts = {"transformer_blocks.": 0, "single_transformer_blocks.": 0}
    per_block: dict[tuple[str, int], int] = {}
    for key, shape in shapes.items():
        where = _block_of(key)
        if where is None:
            continue
        counts[where[0]] = max(counts[where[0]], where[1] + 1)
        if key.endswith(".weight") and len(shape) == 2:
            per_block[where] = per_block.get(where, 0) + shape[0] * shape[1] * itemsize
    nd, ns = counts["transformer_blocks."], counts["single_transformer_blocks."]
    swapped = swapped_positions(nd, ns, n)
    sizes = [per_block.get(("transformer_blocks.", p) if p < nd else ("single_transformer_blocks.", p - nd), 0)
             for p in swapped]
    if not sizes:
        return 0
    return sum(sizes) - SLOTS * max(sizes)


def block_counts(shapes: dict[str, Any]) -> tuple[int, int]:
    """(dual-stream, single-stream) block counts from a DiT's (unprefixed) keys."""
    counts = {"transformer_blocks.": 0, "single_transformer_blocks.": 0}
    for key in shapes:
        where = _block_of(key)
        if where is not None:
            counts[where[0]] = max(counts[where[0]], where[1] + 1)
    return counts["transformer_blocks."], counts["single_transformer_blocks."]
