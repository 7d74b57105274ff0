"""Block swap: the pure schedule (which blocks, when they move) and the executor driven by a fake transfer
layer on the CPU (device slots poisoned with NaN when released, evicted weights replaced by NaN), so a use of
a block that is not "on the device" shows up as a wrong output."""

from __future__ import annotations

import copy

import pytest
import torch

from framepack_cli.errors import FramepackError
from framepack_cli.models.block_swap import (
    SLOTS,
    check_blocks_to_swap,
    device_bytes_saved,
    enable_block_swap,
    forward_order,
    max_blocks_to_swap,
    ring_schedule,
    ring_slots,
    schedule,
    split_blocks,
    streamed_positions,
    swapped_positions,
    training_order,
)
from framepack_cli.models.transformer import FramePackTransformer, load_dit
from tests.conftest import MODELS, golden

# --------------------------------------------------------------------------------------------------
# Which blocks
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "split"), [
    (0, (0, 0)), (1, (0, 3)), (2, (1, 3)), (10, (5, 11)), (20, (10, 21)), (36, (18, 37)), (38, (19, 39)),
])
def test_reference_split_on_the_real_model(n, split):
    assert split_blocks(20, 40, n) == split


def test_limits():
    assert max_blocks_to_swap(20, 40) == 38  # the reference's inference maximum
    assert max_blocks_to_swap(2, 2) == 2  # the tiny golden DiT: one block of each list
    assert split_blocks(2, 2, 2) == (1, 1) and split_blocks(2, 2, 1) == (0, 1)
    assert max_blocks_to_swap(1, 1) == 0
    assert swapped_positions(20, 40, 38) == frozenset([*range(1, 20), *range(21, 60)])
    assert swapped_positions(20, 40, 10) == frozenset([*range(15, 20), *range(49, 60)])
    assert swapped_positions(2, 2, 2) == frozenset({1, 3})
    check_blocks_to_swap(38, 20, 40)
    with pytest.raises(FramepackError) as e:
        check_blocks_to_swap(3, 2, 2)
    assert e.value.message == ("--blocks_to_swap 3: this DiT has 4 blocks (2 dual-stream + 2 single-stream) and "
                               "one of each kind stays on the GPU, so at most 2 can be given; use --blocks_to_swap "
                               "2 or less")


# --------------------------------------------------------------------------------------------------
# The schedule
# --------------------------------------------------------------------------------------------------


def check_schedule(events, order, swapped):
    """Every property the executor relies on, checked by replaying the events."""
    computes = [e for e in events if e.kind == "compute"]
    assert [e.block for e in computes] == list(order)
    assert [e.step for e in computes] == list(range(len(order)))
    loaded: dict[int, int] = {}
    issued_at: dict[int, int] = {}  # block -> how many uses had run when its copy was issued
    last_use: dict[int, int] = {}
    done = 0
    prefetches = 0
    for e in events:
        if e.kind == "prefetch":
            assert e.block in swapped and e.block not in loaded
            assert 0 <= e.slot < SLOTS and e.slot not in loaded.values()
            assert e.slot == sorted(swapped).index(e.block) % SLOTS  # a block always uses the same slot
            loaded[e.block] = e.slot
            issued_at[e.block] = done
            prefetches += 1
        elif e.kind == "evict":
            assert e.block in loaded
            del loaded[e.block]
        else:
            if e.block in swapped:
                assert e.block in loaded  # on the device when used
                kept = issued_at[e.block] <= last_use.get(e.block, -1)  # still there since its last use
                if e.step > 0 and not kept:
                    assert issued_at[e.block] == e.step - 1  # copied during the previous use: one ahead
            last_use[e.block] = e.step
            done += 1
        assert len(loaded) <= SLOTS  # never more swapped blocks on the device than the slots
    assert not loaded  # all evicted at the end
    return prefetches


CASES = [(2, 2, n) for n in range(3)] + [(20, 40, n) for n in range(39)] + [
    (nd, ns, n) for nd in (0, 1, 3, 4, 7) for ns in (1, 2, 5, 9) for n in range(max_blocks_to_swap(nd, ns) + 1)
]


@pytest.mark.parametrize(("nd", "ns", "n"), CASES)
def test_schedule_forward_and_training(nd, ns, n):
    swapped = swapped_positions(nd, ns, n)
    assert len(swapped) == sum(split_blocks(nd, ns, n))
    total = nd + ns
    order = forward_order(total)
    assert sorted(order) == list(range(total))  # every block used exactly once per forward
    assert check_schedule(schedule(order, swapped), order, swapped) == len(swapped)  # each copied once
    order = training_order(total)
    last_two = swapped & {total - 1, total - 2}  # still on the device when the backward starts
    assert check_schedule(schedule(order, swapped), order, swapped) == 2 * len(swapped) - len(last_two)


def test_schedule_arbitrary_sets():
    for swapped in ({0}, {0, 1, 2, 3}, {1, 3, 5}, {0, 4}, set(range(8))):
        for order in (forward_order(8), training_order(8)):
            check_schedule(schedule(order, frozenset(swapped)), order, frozenset(swapped))


def test_schedule_events_on_a_small_case():
    # 2 resident then 3 swapped blocks: the copy of block 2 starts during block 1, block 2 leaves before 4 comes.
    ev = [(e.kind[0], e.block) for e in schedule(forward_order(5), frozenset({2, 3, 4}))]
    assert ev == [("c", 0), ("p", 2), ("c", 1), ("p", 3), ("c", 2), ("e", 2), ("p", 4), ("c", 3), ("e", 3),
                  ("c", 4), ("e", 4)]


# --------------------------------------------------------------------------------------------------
# --block_swap_h2d_only: evenly spaced streamed blocks, a ring of slots per block list
# --------------------------------------------------------------------------------------------------


def test_streamed_blocks_are_spread_evenly():
    # The reference's placement (2i + 1) * L // (2S) per list, with split_blocks' counts.
    assert streamed_positions(20, 40, 20) == frozenset([*range(1, 20, 2),
                                                        *(20 + (2 * i + 1) * 40 // 42 for i in range(21))])
    assert sorted(streamed_positions(20, 40, 20))[10:13] == [20, 22, 24]
    assert streamed_positions(4, 6, 4) == frozenset({1, 3, 4, 5, 7, 8, 9})
    for nd, ns, n in [(20, 40, k) for k in range(39)] + [(4, 6, 4), (2, 2, 2), (3, 9, 5)]:
        pos = streamed_positions(nd, ns, n)
        assert (len([b for b in pos if b < nd]), len([b for b in pos if b >= nd])) == split_blocks(nd, ns, n)
    assert ring_slots(4, frozenset({1, 3, 4, 5, 7, 8, 9}), 2) == {1: 0, 3: 1, 4: 2, 5: 3, 7: 2, 8: 3, 9: 2}
    assert ring_slots(4, frozenset({1, 3, 4, 5, 7, 8, 9}), 1) == {1: 0, 3: 0, 4: 1, 5: 1, 7: 1, 8: 1, 9: 1}
    assert ring_slots(20, frozenset({5, 30}), 3) == {5: 0, 30: 1}  # a ring never has more slots than blocks
    with pytest.raises(ValueError):
        ring_slots(4, frozenset({1}), 0)


def check_ring(events, order, slot_of, resident=None):
    """Replay a ring schedule: (copies, uses of a streamed block whose copy overlapped no other use)."""
    loaded = dict(resident or {})  # slot -> block
    issued: dict[int, int] = {}  # block -> uses done when its copy was issued
    done = copies = stalls = 0
    assert [e.block for e in events if e.kind == "compute"] == list(order)
    for e in events:
        if e.kind == "evict":
            slot = slot_of[e.block]
            assert loaded.get(slot) == e.block
            del loaded[slot]
        elif e.kind == "prefetch":
            assert e.slot == slot_of[e.block] and e.slot not in loaded  # its own slot, emptied first
            loaded[e.slot] = e.block
            issued[e.block] = done
            copies += 1
        else:
            if e.block in slot_of:
                assert loaded.get(slot_of[e.block]) == e.block  # on the device when used
                if e.block in issued and issued.pop(e.block) == e.step:
                    stalls += 1  # copied right before its use: nothing computed meanwhile
            done += 1
    return copies, stalls, loaded


@pytest.mark.parametrize(("nd", "ns", "n"), [(20, 40, k) for k in (1, 2, 10, 20, 36)] + [(4, 6, 4), (2, 2, 2)])
@pytest.mark.parametrize("ring", [1, 2, 3])
def test_ring_schedule(nd, ns, n, ring):
    streamed = streamed_positions(nd, ns, n)
    slot_of = ring_slots(nd, streamed, ring)
    lists = [sum(1 for b in streamed if b < nd), sum(1 for b in streamed if b >= nd)]
    rings = [min(ring, s) for s in lists]
    total = nd + ns
    # Steady-state copies per list: forward, every block but those alone in their slot (kept for the next
    # pass); forward + backward, two fewer per slot than the plain swap (none at the turn-arounds).
    for order, per_list in ((forward_order(total), lambda s, r: max(0, s - max(0, 2 * r - s))),
                            (training_order(total), lambda s, r: 2 * (s - r))):
        assert sorted(set(order)) == list(range(total)) and len(order) in (total, 2 * total)
        events, left = ring_schedule(order, slot_of)  # cold start
        copies, _, state = check_ring(events, order, slot_of)
        assert state == left and copies == sum(rings) + sum(per_list(s, r) for s, r in zip(lists, rings, strict=True))
        for _ in range(2):  # steady state: the next pass starts from what this one left
            events, left2 = ring_schedule(order, slot_of, left)
            copies, stalls, state = check_ring(events, order, slot_of, left)
            assert state == left2 == left
            # no copy at the turn-arounds
            assert copies == sum(per_list(s, r) for s, r in zip(lists, rings, strict=True))
            if ring >= 2:
                assert stalls == 0  # every copy overlaps at least one other block's use


def test_ring_schedule_events_on_a_small_case():
    # Streamed blocks 1, 3, 5 of 6 in one list, ring 2: after block 1 is used block 5 takes its slot; the
    # pass ends by bringing back block 1 for the next one.
    order = forward_order(6)
    slot_of = {1: 0, 3: 1, 5: 0}
    ev, left = ring_schedule(order, slot_of)
    assert [(e.kind[0], e.block) for e in ev] == [("p", 1), ("p", 3), ("c", 0), ("c", 1), ("e", 1), ("p", 5),
                                                  ("c", 2), ("c", 3), ("c", 4), ("c", 5), ("e", 5), ("p", 1)]
    assert left == {0: 1, 1: 3}
    ev, _ = ring_schedule(order, slot_of, left)
    assert [(e.kind[0], e.block) for e in ev][:2] == [("c", 0), ("c", 1)]


def test_real_model_bytes_saved():
    # Shapes of the real 13 B DiT (20 dual + 40 single blocks, width 3072): a dual block's Linear weights are
    # 36·3072² = 339.7 M parameters, a single block's 15·3072² = 141.6 M.
    d = 3072
    shapes: dict[str, tuple[int, ...]] = {}
    dual = {"norm1.linear": (6 * d, d), "norm1_context.linear": (6 * d, d), "attn.to_q": (d, d),
            "attn.to_k": (d, d), "attn.to_v": (d, d), "attn.add_q_proj": (d, d), "attn.add_k_proj": (d, d),
            "attn.add_v_proj": (d, d), "attn.to_out.0": (d, d), "attn.to_add_out": (d, d),
            "ff.net.0.proj": (4 * d, d), "ff.net.2": (d, 4 * d), "ff_context.net.0.proj": (4 * d, d),
            "ff_context.net.2": (d, 4 * d)}
    single = {"norm.linear": (3 * d, d), "proj_mlp": (4 * d, d), "attn.to_q": (d, d), "attn.to_k": (d, d),
              "attn.to_v": (d, d), "proj_out": (d, 5 * d)}
    for i in range(20):
        for k, s in dual.items():
            shapes[f"transformer_blocks.{i}.{k}.weight"] = s
            shapes[f"transformer_blocks.{i}.{k}.bias"] = (s[0],)
    for i in range(40):
        for k, s in single.items():
            shapes[f"single_transformer_blocks.{i}.{k}.weight"] = s
    dual_bytes, single_bytes = 36 * d * d * 2, 15 * d * d * 2  # bf16: 679.5 MB and 283.1 MB
    assert device_bytes_saved(shapes, 10, 2) == 5 * dual_bytes + 11 * single_bytes - 2 * dual_bytes
    assert device_bytes_saved(shapes, 38, 2) == 19 * dual_bytes + 39 * single_bytes - 2 * dual_bytes
    assert device_bytes_saved(shapes, 1, 2) == 3 * single_bytes - 2 * single_bytes
    assert device_bytes_saved(shapes, 0, 2) == 0


# --------------------------------------------------------------------------------------------------
# The executor on the CPU with a fake transfer layer
# --------------------------------------------------------------------------------------------------


class FakeTransfer:
    """The transfer interface on the CPU: copies happen at once; a released slot is overwritten with NaN and
    an evicted weight points at NaN, so computing with a block that is not loaded gives NaN outputs."""

    def __init__(self):
        self.copies = 0
        self.waits = 0
        self.pinned: list[bool] = []

    def device_buffer(self, nbytes):
        return torch.full((nbytes,), 0xFF, dtype=torch.uint8)

    def host_buffer(self, nbytes, pinned):
        self.pinned.append(pinned)
        return torch.empty(nbytes, dtype=torch.uint8)

    def copy(self, dst, src, after):
        dst.copy_(src)
        self.copies += 1
        return object()

    def wait(self, done):
        self.waits += 1

    def release(self, slot):
        slot.fill_(0xFF)  # float32/bf16 NaN bytes
        return object()

    def offloaded(self, host_view):
        return torch.full_like(host_view, float("nan"))

    def synchronize(self):
        pass


def _inputs():
    tensors, _ = golden("unit/dit_vanilla")
    return {k[3:]: v for k, v in tensors.items() if k.startswith("in.")}


@pytest.fixture(scope="module")
def tiny():
    return load_dit(MODELS / "dit_single.safetensors")


def _swapped_copy(model, n, pinned=False):
    m = copy.deepcopy(model)
    fake = FakeTransfer()
    sw = enable_block_swap(m, n, torch.device("cpu"), pinned=pinned, transfer=fake)
    return m, sw, fake


@pytest.mark.parametrize("n", [1, 2])
def test_forward_equals_the_unswapped_model(tiny, n):
    kwargs = _inputs()
    with torch.no_grad():
        want = tiny(**kwargs)
        m, sw, fake = _swapped_copy(tiny, n, pinned=True)
        for _ in range(2):  # two steps: the second starts from the state the first left
            got = m(**kwargs)
            assert torch.equal(got, want)
    assert fake.pinned and all(fake.pinned)
    assert fake.copies == 2 * len(sw.swapped)
    assert not sw.slot_of  # everything evicted after a forward
    computes = [e.block for e in sw.log if e.kind == "compute"]
    assert computes == [0, 1, 2, 3]
    # Evicted weights are NaN here: a forward that skipped the swapper would not match.
    w = m.single_transformer_blocks[1].attn.to_q.weight
    assert torch.isnan(w).all()


def _wide(nd=4, ns=6, seed=0):
    torch.manual_seed(seed)
    cfg = dict(in_channels=16, out_channels=16, num_attention_heads=1, attention_head_dim=128, num_layers=nd,
               num_single_layers=ns, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
               qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=128, pooled_projection_dim=128,
               rope_axes_dim=(16, 56, 56), image_proj_dim=144, rope_theta=256.0)
    m = FramePackTransformer(**cfg)
    m.requires_grad_(False)
    return m.eval()


def test_forward_many_blocks():
    model = _wide()
    kwargs = _inputs()
    with torch.no_grad():
        want = model(**kwargs)
        for n in range(max_blocks_to_swap(4, 6) + 1):
            m, sw, fake = _swapped_copy(model, n)
            assert torch.equal(m(**kwargs), want), n
            assert fake.copies == len(sw.swapped)


@pytest.mark.parametrize("mode", ["plain", "checkpointing", "checkpointing_cpu_offload", "diffusers_checkpointing"])
def test_training_backward_equals_the_unswapped_model(mode):
    from framepack_cli.models.lora.training import create_network

    model = _wide()
    kwargs = _inputs()

    def step(m, swapped):
        if mode.startswith("checkpointing"):
            m.enable_training_checkpointing(cpu_offload=mode.endswith("offload"))
            m.train()
        elif mode == "diffusers_checkpointing":
            m.enable_gradient_checkpointing()
        torch.manual_seed(1)
        net = create_network("networks.lora_framepack", m, dim=4, alpha=1.0, dropout=None, network_args={})
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0, 0.1)  # lora_up starts at zero; make every LoRA matter
        hidden = kwargs["hidden_states"].clone().requires_grad_(True)
        grads = []
        for _ in range(2):  # the second step starts from what the first backward left
            net.zero_grad(set_to_none=True)
            hidden.grad = None
            out = m(**{**kwargs, "hidden_states": hidden})
            out.square().mean().backward()
            grads.append((out.detach(), hidden.grad.clone(), [p.grad.clone() for p in net.parameters()]))
        return grads

    want = step(copy.deepcopy(model), False)
    m, sw, fake = _swapped_copy(model, 4)  # 2 of 4 dual + 5 of 6 single blocks swapped
    got = step(m, True)
    for (o1, h1, g1), (o2, h2, g2) in zip(want, got, strict=True):
        assert torch.equal(o1, o2) and torch.equal(h1, h2)
        assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))
        assert torch.isfinite(h2).all()
    uses = [e.step for e in sw.log if e.kind == "compute"]
    assert uses == list(range(20))  # forward 0..9, then the backward's uses of blocks 9..0
    assert not sw.slot_of


def test_training_backward_without_input_grad():
    """Only the LoRA needs gradients (the usual training case): the backward stops at block 0 and the next
    forward starts clean."""
    from framepack_cli.models.lora.training import create_network

    model = _wide()
    kwargs = _inputs()
    results = []
    for swap in (False, True):
        m = copy.deepcopy(model)
        sw = enable_block_swap(m, 4, torch.device("cpu"), transfer=FakeTransfer()) if swap else None
        torch.manual_seed(1)
        net = create_network("networks.lora_framepack", m, dim=4, alpha=1.0, dropout=None,
                             network_args={"exclude_patterns": "['.*transformer_blocks[.]0[.].*']"})
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0, 0.1)
        grads = []
        for _ in range(2):
            net.zero_grad(set_to_none=True)
            m(**kwargs).square().mean().backward()
            grads.append([p.grad.clone() for p in net.parameters()])
        results.append(grads)
        if sw is not None:
            assert any(e.step >= 10 for e in sw.log if e.kind == "compute")
    for g1, g2 in zip(*results, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


class _FakeCuda:
    """torch.cuda's stream/event calls as a log (CudaTransfer run on the CPU)."""

    def __init__(self):
        self.log: list[tuple] = []
        fake = self

        class Stream:
            def __init__(self, device=None):
                self.name = "side"

            def wait_event(self, ev):
                fake.log.append(("wait_event", self.name, ev.id))

            def synchronize(self):
                fake.log.append(("synchronize", self.name))

        class Event:
            count = 0

            def __init__(self):
                Event.count += 1
                self.id = Event.count

            def record(self, stream):
                fake.log.append(("record", stream.name, self.id))

        class Current(Stream):
            def __init__(self):
                self.name = "compute"

        self.Stream, self.Event, self.current = Stream, Event, Current()

    def install(self, monkeypatch):
        from contextlib import contextmanager

        @contextmanager
        def stream(s):
            self.log.append(("enter", s.name))
            yield
            self.log.append(("exit", s.name))

        monkeypatch.setattr(torch.cuda, "Stream", self.Stream)
        monkeypatch.setattr(torch.cuda, "Event", self.Event)
        monkeypatch.setattr(torch.cuda, "stream", stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: self.current)


def test_cuda_transfer_orders_copies_with_events(tiny, monkeypatch):
    """CudaTransfer's calls with torch.cuda faked: each copy waits for its slot's release event on the side
    stream, records a done event there, and the compute stream waits for that event before the block runs.
    Host buffers are pageable here, so copies go through the worker thread."""
    from framepack_cli.models.block_swap import CudaTransfer

    fake = _FakeCuda()
    fake.install(monkeypatch)
    kwargs = _inputs()
    with torch.no_grad():
        want = tiny(**kwargs)
        m = copy.deepcopy(tiny)
        sw = enable_block_swap(m, 2, torch.device("cpu"), transfer=CudaTransfer(torch.device("cpu")))
        for _ in range(2):
            assert torch.equal(m(**kwargs), want)
    log = fake.log
    done = [e for e in log if e[0] == "record" and e[1] == "side"]
    released = [e for e in log if e[0] == "record" and e[1] == "compute"]
    assert len(done) == 4 and len(released) == 4  # 2 swapped blocks x 2 forwards
    for ev in done:  # the compute stream waits for every copy
        assert ("wait_event", "compute", ev[2]) in log
        assert log.index(("wait_event", "compute", ev[2])) > log.index(ev)
    # The second forward's copies wait for the first forward's releases of the same slots.
    side_waits = [e[2] for e in log if e[0] == "wait_event" and e[1] == "side"]
    assert side_waits == [r[2] for r in released[:2]]
    assert sw.transfer._worker is not None


@pytest.mark.parametrize("ring", [1, 2])
def test_h2d_only_forward_and_checkpointed_backward_equal_the_unswapped_model(ring):
    """--block_swap_h2d_only (rings, blocks kept until their slot is needed) gives the unswapped outputs and
    gradients, in a forward-only pass and in checkpointed training steps, with the copies the schedule says."""
    from framepack_cli.models.lora.training import create_network

    model = _wide()
    kwargs = _inputs()  # shortened text and image tokens: a fast test
    kwargs.update(encoder_hidden_states=kwargs["encoder_hidden_states"][:, :16],
                  encoder_attention_mask=kwargs["encoder_attention_mask"][:, :16],
                  image_embeddings=kwargs["image_embeddings"][:, :16])
    with torch.no_grad():
        want = model(**kwargs)
        m = copy.deepcopy(model)
        fake = FakeTransfer()
        sw = enable_block_swap(m, 4, torch.device("cpu"), transfer=fake, ring_size=ring)
        assert sw.swapped == streamed_positions(4, 6, 4) and sw.ring
        for _ in range(2):
            assert torch.equal(m(**kwargs), want)
    steady = ring_schedule(forward_order(10), sw.slot_map, ring_schedule(forward_order(10), sw.slot_map)[1])[0]
    per_pass = sum(e.kind == "prefetch" for e in steady)
    cold = sum(e.kind == "prefetch" for e in ring_schedule(forward_order(10), sw.slot_map)[0])
    assert fake.copies == cold + per_pass
    assert len(sw.slots) == len(set(sw.slot_map.values()))  # one ring per block list

    def step(m):
        m.enable_training_checkpointing(cpu_offload=False)
        m.train()
        torch.manual_seed(1)
        net = create_network("networks.lora_framepack", m, dim=4, alpha=1.0, dropout=None, network_args={})
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0, 0.1)
        hidden = kwargs["hidden_states"].clone().requires_grad_(True)
        out = []
        for _ in range(2):
            net.zero_grad(set_to_none=True)
            hidden.grad = None
            o = m(**{**kwargs, "hidden_states": hidden})
            o.square().mean().backward()
            out.append((o.detach(), hidden.grad.clone(), [p.grad.clone() for p in net.parameters()]))
        return out

    plain = step(copy.deepcopy(model))
    m = copy.deepcopy(model)
    fake = FakeTransfer()
    sw = enable_block_swap(m, 4, torch.device("cpu"), transfer=fake, ring_size=ring)
    got = step(m)
    for (o1, h1, g1), (o2, h2, g2) in zip(plain, got, strict=True):
        assert torch.equal(o1, o2) and torch.equal(h1, h2)
        assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))
    assert [e.step for e in sw.log if e.kind == "compute"] == list(range(20))
    order = training_order(10)
    cold, left = ring_schedule(order, sw.slot_map)
    steady = ring_schedule(order, sw.slot_map, left)[0]
    assert fake.copies == sum(e.kind == "prefetch" for e in cold + steady)
