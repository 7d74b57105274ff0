"""Trainable LoHa / LoKr networks, the `create_network` factory and DiT training checkpointing.

Reference rules (musubi-tuner `networks/loha.py`, `networks/lokr.py`, `networks/lora.py`; training.md §5.6, §4.10)
are written out here as expectations; no reference code is imported.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from framepack_cli.errors import FramepackError, ModelFormatError
from framepack_cli.models.lora.lycoris import LohaNetwork, LokrNetwork, factorization
from framepack_cli.models.lora.modules import LoraSpec
from framepack_cli.models.lora.network import LoraNetwork, training_metadata
from framepack_cli.models.lora.training import TrainableNetwork, create_network, module_lines
from tests.conftest import MODELS

DIT = MODELS / "dit_single.safetensors"
LORA_TINY = MODELS / "lora_tiny.safetensors"
pytestmark = pytest.mark.skipif(not DIT.is_file(), reason="golden models missing")

MODULES = ("networks.lora_framepack", "networks.loha", "networks.lokr")


def _dit():
    from framepack_cli.models.transformer import load_dit

    return load_dit(DIT)


@pytest.fixture
def dit():
    return _dit()


def _inputs(dit, history: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    cfg = dit.config
    kw = dict(hidden_states=torch.randn(1, 16, 2, 8, 8, generator=g), timestep=torch.tensor([500.0]),
              encoder_hidden_states=torch.randn(1, 6, cfg.text_embed_dim, generator=g),
              encoder_attention_mask=None, pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g),
              guidance=torch.tensor([1000.0]), latent_indices=torch.tensor([[3, 4]]))
    if history:
        kw.update(clean_latents=torch.randn(1, 16, 2, 8, 8, generator=g), clean_latent_indices=torch.tensor([[0, 5]]),
                  clean_latents_2x=torch.randn(1, 16, 2, 8, 8, generator=g),
                  clean_latent_2x_indices=torch.tensor([[6, 7]]),
                  image_embeddings=torch.randn(1, 9, dit.image_projection.up.in_features, generator=g))
    return kw


def _randomize(net, std: float = 0.2, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def _by_path(net, path: str):
    return next(m for m in net.loras if m.path == path)


# --------------------------------------------------------------------------------------------------
# LoHa: names, shapes, init
# --------------------------------------------------------------------------------------------------


def test_loha_keys_shapes_dtypes_follow_the_reference(dit):
    net = LohaNetwork(dit, 4, 2.0)
    assert net.network_module == "networks.loha" and len(net.loras) == 34
    lora_names = LoraNetwork(_dit(), 4, 1.0).module_names
    assert net.module_names == lora_names  # same targets as networks.lora_framepack
    state = net.state_dict()
    assert len(state) == 34 * 5
    for path, linear in [(m.path, m.org_module) for m in net.loras]:
        name = "lora_unet_" + path.replace(".", "_")
        o, i = linear.out_features, linear.in_features
        assert {k.removeprefix(name + "."): list(v.shape) for k, v in state.items() if k.startswith(name + ".")} == {
            "hada_w1_a": [o, 4], "hada_w1_b": [4, i], "hada_w2_a": [o, 4], "hada_w2_b": [4, i], "alpha": []}
    assert {v.dtype for v in state.values()} == {torch.float32}
    assert all(v.item() == 2.0 for k, v in state.items() if k.endswith(".alpha"))
    assert {m.scale for m in net.loras} == {0.5}
    assert {m.scale for m in LohaNetwork(_dit(), 8, 0.0).loras} == {1.0}  # alpha 0 -> rank
    assert {float(m.alpha) for m in LohaNetwork(_dit(), 8, None).loras} == {1.0}  # None -> 1 like --network_alpha


def test_loha_init_is_the_references_and_a_fresh_network_is_the_identity(dit):
    kw = _inputs(dit)
    with torch.no_grad():
        base = dit(**kw)
    net = LohaNetwork(dit, 16, 1.0, exclude_patterns=[r".*attn.*"])
    w1a = torch.cat([m.hada_w1_a.flatten() for m in net.loras])
    w1b = torch.cat([m.hada_w1_b.flatten() for m in net.loras])
    w2b = torch.cat([m.hada_w2_b.flatten() for m in net.loras])
    assert all(not m.hada_w2_a.any() for m in net.loras)  # w2_a = 0
    assert w1a.std().item() == pytest.approx(0.1, rel=0.05) and w1b.std().item() == pytest.approx(1.0, rel=0.05)
    assert w2b.std().item() == pytest.approx(1.0, rel=0.05) and abs(w1a.mean().item()) < 0.01
    with torch.no_grad():
        assert torch.equal(dit(**kw), base)
    # the only non-zero gradients at init are those of w2_a (the others are multiplied by w2_a = 0)
    dit(**kw).square().mean().backward()
    m = net.loras[0]
    assert m.hada_w2_a.grad.abs().sum() > 0 and not m.hada_w1_a.grad.any() and not m.hada_w2_b.grad.any()


def test_loha_delta_and_its_custom_backward(dit):
    net = LohaNetwork(dit, 4, 3.0, apply=False)
    _randomize(net)
    m = net.loras[0]
    ref = ((m.hada_w1_a @ m.hada_w1_b) * (m.hada_w2_a @ m.hada_w2_b)) * 0.75
    torch.testing.assert_close(m.delta(), ref)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad((m.delta() * g).sum(), list(m.parameters()))
    auto = torch.autograd.grad((ref * g).sum(), list(m.parameters()))
    for a, b in zip(grads, auto, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# LoKr: factorization, names, shapes, init
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dim", "factor", "pair"), [
    (128, -1, (8, 16)), (512, -1, (16, 32)), (1024, -1, (32, 32)), (3072, -1, (48, 64)), (12288, -1, (96, 128)),
    (15360, -1, (120, 128)), (640, -1, (20, 32)), (128, 4, (4, 32)), (512, 4, (4, 128)), (3072, 4, (4, 768)),
    (3072, 3072, (1, 3072)), (128, 3, (2, 64)), (128, 0, (1, 128)), (7, -1, (1, 7)), (1, -1, (1, 1)),
])
def test_lokr_factorization(dim, factor, pair):
    assert factorization(dim, factor) == pair


def _lokr_expected(o: int, i: int, r: int, factor: int = -1) -> dict[str, list[int]]:
    in_m, in_n = factorization(i, factor)
    out_l, out_k = factorization(o, factor)
    if r < max(out_k, in_n) / 2:
        return {"lokr_w1": [out_l, in_m], "lokr_w2_a": [out_k, r], "lokr_w2_b": [r, in_n], "alpha": []}
    return {"lokr_w1": [out_l, in_m], "lokr_w2": [out_k, in_n], "alpha": []}


@pytest.mark.parametrize(("dim", "factor"), [(4, -1), (8, -1), (16, -1), (4, 4), (8, 4)])
def test_lokr_keys_and_shapes_follow_the_reference(dit, dim, factor):
    net = LokrNetwork(dit, dim, 2.0, factor=factor)
    assert net.network_module == "networks.lokr" and len(net.loras) == 34
    state = net.state_dict()
    for m in net.loras:
        name = m.lora_name
        o, i = m.org_module.out_features, m.org_module.in_features
        got = {k.removeprefix(name + "."): list(v.shape) for k, v in state.items() if k.startswith(name + ".")}
        assert got == _lokr_expected(o, i, dim, factor), name
        # full w2: alpha forced to the rank and scale 1; low rank: scale alpha / rank
        assert (m.scale, float(m.alpha)) == ((1.0, float(dim)) if m.full else (2.0 / dim, 2.0)), name
    assert {v.dtype for v in state.values()} == {torch.float32}


def test_lokr_examples_on_the_tiny_dit(dit):
    net = LokrNetwork(dit, 4, 1.0)
    to_q = _by_path(net, "transformer_blocks.0.attn.to_q")  # 128 -> 128: (8, 16) x (8, 16)
    assert (list(to_q.lokr_w1.shape), list(to_q.lokr_w2_a.shape), list(to_q.lokr_w2_b.shape)) == (
        [8, 8], [16, 4], [4, 16])
    proj_out = _by_path(net, "single_transformer_blocks.0.proj_out")  # 640 -> 128
    assert (list(proj_out.lokr_w1.shape), list(proj_out.lokr_w2_a.shape), list(proj_out.lokr_w2_b.shape)) == (
        [8, 20], [16, 4], [4, 32])
    mixed = LokrNetwork(_dit(), 8, 1.0)  # 8 >= 16/2 for 128x128, not for 128x512
    assert _by_path(mixed, "transformer_blocks.0.attn.to_q").full
    assert not _by_path(mixed, "transformer_blocks.0.ff.net.0.proj").full
    assert len(mixed.warnings) == 1 and mixed.warnings[0].startswith("LoKr: --network_dim 8 is not below half")


def test_lokr_init_is_the_identity_and_kaiming(dit):
    kw = _inputs(dit)
    with torch.no_grad():
        base = dit(**kw)
    net = LokrNetwork(dit, 4, 1.0)
    m = _by_path(net, "transformer_blocks.0.ff.net.0.proj")
    assert not m.lokr_w2_b.any() and m.lokr_w2_a.any() and m.lokr_w1.any()
    bound = 1 / math.sqrt(m.lokr_w1.shape[1])  # kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert m.lokr_w1.abs().max().item() <= bound
    full = LokrNetwork(_dit(), 16, 1.0)
    assert all(not x.lokr_w2.any() for x in full.loras if x.full)
    with torch.no_grad():
        assert torch.equal(dit(**kw), base)
    torch.testing.assert_close(m.delta(), torch.kron(m.lokr_w1, m.lokr_w2_a @ m.lokr_w2_b) * 0.25)


# --------------------------------------------------------------------------------------------------
# Saved files load in `framepack generate --lora_weight` (load_dit(loras=...)) and give the live output
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("module", "dim", "alpha", "args", "std"), [
    ("networks.lora_framepack", 4, 2.0, {}, 0.2),
    ("networks.loha", 4, 2.0, {}, 0.4),
    ("networks.loha", 8, 0.0, {"exclude_patterns": "[r'.*ff.*']"}, 0.3),
    ("networks.lokr", 4, 2.0, {}, 0.3),
    ("networks.lokr", 16, 3.0, {}, 0.05),  # full w2 everywhere: scale 1
    ("networks.lokr", 8, 2.0, {"factor": "4"}, 0.2),
])
def test_saved_network_merged_by_generate_gives_the_live_output(dit, tmp_path, module, dim, alpha, args, std):
    from framepack_cli.models.transformer import load_dit

    kw = _inputs(dit)
    with torch.no_grad():
        base = dit(**kw)
    net = create_network(module, dit, dim=dim, alpha=alpha, dropout=None, network_args=args)
    _randomize(net, std)
    net.eval()
    with torch.no_grad():
        live = dit(**kw)
    assert (live - base).abs().max().item() > 1e-2  # the network does change the output
    out = tmp_path / "trained.safetensors"
    meta = training_metadata({"network_module": net.network_module, "network_dim": net.dim,
                              "network_alpha": net.alpha}, timestamp=0.0, title="t")
    net.save_weights(out, dtype=torch.float32, metadata=meta)
    with safe_open(str(out), framework="pt") as h:
        assert h.metadata()["ss_network_module"] == module
        assert set(h.keys()) == set(net.state_dict())
    merged_dit = load_dit(DIT, loras=[LoraSpec(str(out), 1.0)])
    kind = {"networks.lora_framepack": "LoRA", "networks.loha": "LoHa", "networks.lokr": "LoKr"}[module]
    assert f"musubi-framepack {kind}" in merged_dit.lora_report[0]
    assert f"{len(net.loras)} modules merged, 0 keys unused" in merged_dit.lora_report[0]
    with torch.no_grad():
        merged = merged_dit(**kw)
    torch.testing.assert_close(merged, live, rtol=1e-5, atol=2e-5)


def test_multiplier_and_remove(dit):
    kw = _inputs(dit, history=False)
    with torch.no_grad():
        base = dit(**kw)
    net = create_network("networks.loha", dit, dim=4, alpha=1.0, dropout=None, network_args={})
    _randomize(net, 0.4)
    with torch.no_grad():
        assert not torch.equal(dit(**kw), base)
        net.set_multiplier(0.0)
        assert torch.equal(dit(**kw), base)
        net.set_multiplier(1.0)
        net.remove_from_model()
        assert torch.equal(dit(**kw), base)
        net.apply_to_model()
        assert not torch.equal(dit(**kw), base)


def test_networks_are_trainable_networks(dit):
    for module in MODULES:
        net = create_network(module, _dit(), dim=4, alpha=1.0, dropout=None, network_args={})
        assert isinstance(net, TrainableNetwork) and net.network_module == module
        assert (net.dim, net.alpha, net.loraplus_lr_ratio, net.warnings) == (4, 1.0, None, [])
        params = list(net.trainable_parameters())
        assert params and all(p.requires_grad and p.dtype == torch.float32 for p in params)
        assert {id(p) for p in params} == {id(p) for p in net.parameters()}


# --------------------------------------------------------------------------------------------------
# Dropouts, LoRA+, max norm
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["networks.loha", "networks.lokr"])
def test_rank_and_module_dropout_only_in_training(dit, module):
    warned = []
    net = create_network(module, dit, dim=4, alpha=1.0, dropout=0.5,
                         network_args={"rank_dropout": "0.5", "module_dropout": "0.3"}, warn=warned.append)
    assert warned == [f"--network_dropout 0.5 is ignored by {module} (as by the reference); "
                      "use --network_args rank_dropout=P or module_dropout=P"]
    _randomize(net, 0.4)
    m = _by_path(net, "transformer_blocks.0.attn.to_q")
    x = torch.randn(2, 5, 128)
    net.eval()
    assert torch.equal(m.org_module(x), m.org_module(x))
    full = m.org_module(x)
    net.train()
    torch.manual_seed(0)
    outs = [m.org_module(x) for _ in range(8)]
    assert len({tuple(o.flatten()[:8].tolist()) for o in outs}) > 1
    y0 = m._org_forward(x)
    for o in outs:
        delta = o - y0
        rows = delta.abs().sum(dim=(0, 1))
        if rows.any():  # rank dropout: whole output rows of ΔW zeroed, the kept ones scaled by 1/(1-p)
            kept = rows > 0
            torch.testing.assert_close(delta[..., kept], (full - y0)[..., kept] * 2.0, rtol=1e-4, atol=1e-5)


def test_lora_network_dropout_and_loraplus_from_network_args(dit):
    net = create_network("networks.lora_framepack", dit, dim=4, alpha=1.0, dropout=0.25,
                         network_args={"loraplus_lr_ratio": "4", "rank_dropout": "0.1"})
    assert {(m.dropout, m.rank_dropout) for m in net.loras} == {(0.25, 0.1)} and net.warnings == []
    assert net.loraplus_lr_ratio == 4.0
    groups = net.param_groups(1e-4)
    assert [g["lr"] for g in groups] == [1e-4, 4e-4] and all(len(g["params"]) == 34 for g in groups)
    assert net.max_norm_regularize(1.0)[0] == 0  # zero lora_up: nothing to scale


@pytest.mark.parametrize("module", ["networks.loha", "networks.lokr"])
def test_lycoris_loraplus_and_max_norm_do_not_apply(dit, module):
    net = create_network(module, dit, dim=4, alpha=1.0, dropout=None, network_args={"loraplus_lr_ratio": "4"})
    label = "LoHa" if module.endswith("loha") else "LoKr"
    assert net.warnings == [f"--network_args: loraplus_lr_ratio has no effect on {label} (there are no lora_up "
                            "weights); all parameters train at the learning rate"]
    groups = net.param_groups(2e-4)
    assert len(groups) == 1 and groups[0]["lr"] == 2e-4 and len(groups[0]["params"]) == len(list(net.parameters()))
    assert net.param_groups(0.0) == []
    assert net.max_norm_regularize(1.0) is None


def test_network_args_warnings_once(dit):
    net = create_network("networks.loha", dit, dim=4, alpha=1.0, dropout=None,
                         network_args={"factor": "4", "conv_dim": "4", "rank_dropot": "0.1", "verbose": "True"})
    assert net.warnings == [
        "--network_args: rank_dropot not known to networks.loha; ignored",
        "--network_args: conv_dim/conv_alpha change nothing (the FramePack targets are Linear only)",
        "--network_args: factor is a LoKr argument; ignored by networks.loha",
    ]
    assert net.verbose and len(module_lines(net)) == 34
    assert module_lines(net)[0] == f"{'lora_unet_transformer_blocks_0_attn_to_q':50} 4, 1"


# --------------------------------------------------------------------------------------------------
# Factory errors (exact lines)
# --------------------------------------------------------------------------------------------------


def _error(fn, *args, **kwargs) -> FramepackError:
    with pytest.raises(FramepackError) as e:
        fn(*args, **kwargs)
    return e.value


def _make(module: str, tmp_path, name: str, dim: int = 4, alpha: float = 1.0, **kw):
    net = create_network(module, _dit(), dim=dim, alpha=alpha, dropout=None, network_args=kw)
    _randomize(net)
    path = tmp_path / f"{name}.safetensors"
    net.save_weights(path)
    return net, path


def test_unknown_module(dit):
    e = _error(create_network, "networks.lora", dit, dim=4, alpha=1.0, dropout=None, network_args={})
    assert str(e) == ("--network_module: 'networks.lora' is not supported; use one of networks.lora_framepack, "
                      "networks.loha, networks.lokr")


def test_bad_network_args_values(dit):
    def make(module="networks.lokr", **args):
        return create_network(module, dit, dim=4, alpha=1.0, dropout=None, network_args=args)

    assert _error(make, rank_dropout="abc").message == "--network_args: rank_dropout=abc is not a number"
    assert _error(make, module_dropout="1.5").message == "--network_args: module_dropout=1.5 is outside [0, 1)"
    assert _error(make, factor="x").message == "--network_args: factor=x is not an integer"
    assert _error(make, "networks.lora_framepack", loraplus_lr_ratio="0").message == (
        "--network_args: loraplus_lr_ratio=0 is not a positive number")
    assert _error(create_network, "networks.loha", dit, dim=4, alpha=1.0, dropout=1.0,
                  network_args={}).message == "--network_dropout: 1 is outside [0, 1)"
    assert _error(create_network, "networks.loha", dit, dim=4, alpha=1.0, dropout=None, network_args={},
                  dim_from_weights=True).message == (
        "--dim_from_weights: needs --network_weights (the file whose ranks and alphas to use)")


def test_hunyuanvideo_lora_is_refused(dit, tmp_path):
    path = tmp_path / "hv.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 128),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(384, 4),
               "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(4.0)}, str(path))
    e = _error(create_network, "networks.lora_framepack", dit, dim=4, alpha=1.0, dropout=None, network_args={},
               weights=str(path))
    assert e.message == (
        f"--network_weights: {path} is a HunyuanVideo LoRA (musubi-hunyuanvideo layout, e.g. "
        "lora_unet_double_blocks_0_img_attn_qkv), expected a FramePack LoRA (lora_unet_transformer_blocks_* / "
        "lora_unet_single_transformer_blocks_*) for --network_module networks.lora_framepack")
    assert e.hint == "framepack lora convert FILE --to musubi --output NEW writes it with FramePack module names"


def test_file_of_another_kind_is_refused(dit, tmp_path):
    _, loha = _make("networks.loha", tmp_path, "loha")
    e = _error(create_network, "networks.lora_framepack", dit, dim=4, alpha=1.0, dropout=None, network_args={},
               weights=str(loha))
    assert e.message == (f"--network_weights: {loha} is a LoHa file (34 modules), expected a LoRA file for "
                         "--network_module networks.lora_framepack")
    assert e.hint == "use --network_module networks.loha"
    e = _error(create_network, "networks.lokr", dit, dim=4, alpha=1.0, dropout=None, network_args={},
               weights=str(LORA_TINY))
    assert e.message == (f"--network_weights: {LORA_TINY} is a LoRA file (34 modules), expected a LoKr file for "
                         "--network_module networks.lokr")
    assert e.hint == "use --network_module networks.lora_framepack"


def test_rank_mismatch_is_refused(dit, tmp_path):
    e = _error(create_network, "networks.lora_framepack", dit, dim=8, alpha=1.0, dropout=None, network_args={},
               weights=str(LORA_TINY))
    assert e.message == (f"--network_weights: {LORA_TINY} is a LoRA of rank 4, alpha 2, expected rank 8 "
                         "(--network_dim 8)")
    assert e.hint == "use --network_dim 4, or --dim_from_weights to take the ranks and alphas from the file"
    _, loha = _make("networks.loha", tmp_path, "loha", dim=2, alpha=1.0)
    e = _error(create_network, "networks.loha", dit, dim=None, alpha=1.0, dropout=None, network_args={},
               weights=str(loha))
    assert e.message == f"--network_weights: {loha} is a LoHa of rank 2, alpha 1, expected rank 4 (--network_dim 4)"


def test_lokr_factor_mismatch_names_the_shapes(dit, tmp_path):
    _, lokr = _make("networks.lokr", tmp_path, "lokr4", factor="4")
    e = _error(create_network, "networks.lokr", dit, dim=4, alpha=1.0, dropout=None, network_args={},
               weights=str(lokr))
    assert e.message.startswith(f"--network_weights: {lokr}: shapes do not match for 34 module(s): "
                                "lora_unet_single_transformer_blocks_0_attn_to_k lokr_w1[4, 4] lokr_w2_a[32, 4] "
                                "lokr_w2_b[4, 32], network lokr_w1[8, 8] lokr_w2_a[16, 4] lokr_w2_b[4, 16]")
    assert "--network_args factor=N" in e.hint


def test_not_a_lora_file_is_refused(dit):
    with pytest.raises(ModelFormatError, match=r"--network_weights: .*dit_single\.safetensors looks like .*DiT"):
        create_network("networks.loha", dit, dim=4, alpha=1.0, dropout=None, network_args={}, weights=str(DIT))


def test_weights_with_fewer_modules_warns(dit, tmp_path):
    _, part = _make("networks.loha", tmp_path, "part", exclude_patterns="[r'.*ff.*']")
    net = create_network("networks.loha", dit, dim=4, alpha=1.0, dropout=None, network_args={}, weights=str(part))
    assert net.warnings == [f"--network_weights: {part} has no weights for 8 of 34 network modules (e.g. "
                            "lora_unet_transformer_blocks_0_ff_net_0_proj); they start from their initial values"]


# --------------------------------------------------------------------------------------------------
# --network_weights and --dim_from_weights for the three kinds
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("module", "dim", "alpha", "args"), [
    ("networks.lora_framepack", 8, 3.0, {}),
    ("networks.loha", 8, 3.0, {}),
    ("networks.lokr", 4, 3.0, {"factor": "4"}),
    ("networks.lokr", 8, 3.0, {}),  # mixed full / low-rank w2
])
def test_dim_from_weights(tmp_path, module, dim, alpha, args):
    src, path = _make(module, tmp_path, "src", dim=dim, alpha=alpha, **args)
    ref_state = load_file(path)
    dit = _dit()
    net = create_network(module, dit, dim=None, alpha=1.0, dropout=None, network_args={}, weights=str(path),
                         dim_from_weights=True)
    assert net.warnings == []
    assert (net.dim, net.alpha) == (dim, alpha)
    assert [m.lora_dim for m in net.loras] == [m.lora_dim for m in src.loras]
    state = net.state_dict()
    assert set(state) == set(ref_state) and all(torch.equal(state[k], ref_state[k]) for k in state)
    assert [m.scale for m in net.loras] == [m.scale for m in src.loras]
    kw = _inputs(dit)
    net.eval()
    src.eval()
    with torch.no_grad():
        got = dit(**kw)
        want = src._model[0](**kw)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    resaved = tmp_path / "again.safetensors"
    net.save_weights(resaved)
    assert {k: v.tolist() for k, v in load_file(resaved).items()} == {k: v.tolist() for k, v in ref_state.items()}


@pytest.mark.parametrize("module", MODULES)
def test_network_weights_load_and_alpha_sets_the_scale(tmp_path, module):
    src, path = _make(module, tmp_path, "src", dim=4, alpha=2.0)
    net = create_network(module, _dit(), dim=4, alpha=1.0, dropout=None, network_args={}, weights=str(path))
    state, ref = net.state_dict(), load_file(path)
    assert all(torch.equal(state[k], ref[k]) for k in ref)
    assert [m.scale for m in net.loras] == [m.scale for m in src.loras]
    assert net.alpha == 1.0  # --network_alpha as given (the metadata); the modules follow the file


def test_load_state_dict_sets_the_scale(dit, tmp_path):
    _, path = _make("networks.loha", tmp_path, "loha", dim=4, alpha=2.0)
    net = LohaNetwork(dit, 4, 1.0)
    net.load_state_dict(load_file(path))
    assert {m.scale for m in net.loras} == {0.5}


# --------------------------------------------------------------------------------------------------
# DiT gradient checkpointing for training
# --------------------------------------------------------------------------------------------------


def _grads(dit, net, seed: int = 5):
    net.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # dropout masks: the same in every run (checkpointing must recompute them)
    out = dit(**_inputs(dit))
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in net.trainable_parameters()]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("cpu_offload", [False, True])
def test_checkpointed_gradients_equal_plain_ones(dit, module, cpu_offload):
    args = {"rank_dropout": "0.2"}
    net = create_network(module, dit, dim=4, alpha=1.0, dropout=0.3 if module.endswith("framepack") else None,
                         network_args=args)
    _randomize(net, 0.2)
    dit.train()
    net.train()
    out0, g0 = _grads(dit, net)
    assert all(g.abs().sum() > 0 for g in g0[:4])

    calls = {"n": 0}

    def count(*_):
        calls["n"] += 1

    hooks = [b.register_forward_pre_hook(count) for b in (*dit.transformer_blocks, *dit.single_transformer_blocks)]
    dit.enable_training_checkpointing(cpu_offload=cpu_offload)
    try:
        out1, g1 = _grads(dit, net)
    finally:
        dit.disable_training_checkpointing()
        for h in hooks:
            h.remove()
    n_blocks = len(dit.transformer_blocks) + len(dit.single_transformer_blocks)
    assert calls["n"] == 2 * n_blocks  # every block recomputed once in backward
    torch.testing.assert_close(out1, out0, rtol=0, atol=1e-6)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_cpu_offload_moves_block_streams_to_the_offload_device(dit, monkeypatch):
    from framepack_cli.models import transformer as tr

    net = create_network("networks.lora_framepack", dit, dim=4, alpha=1.0, dropout=None, network_args={})
    _randomize(net)
    moved = []
    real = tr._to_offload

    def spy(x):
        moved.append(tuple(x.shape))
        return real(x)

    monkeypatch.setattr(tr, "_to_offload", spy)
    dit.enable_training_checkpointing(cpu_offload=True)
    n_blocks = len(dit.transformer_blocks) + len(dit.single_transformer_blocks)
    with torch.utils.checkpoint.set_checkpoint_early_stop(False):  # backward recomputes whole blocks
        out = dit(**_inputs(dit))
    # the two streams before the loop, then both outputs of every block: what the checkpoints keep
    assert len(moved) == 2 + 2 * n_blocks
    assert moved[:2] == [(1, 68, 128), (1, 15, 128)]  # 4 (2x) + 32 (1x) + 32 noisy image tokens; 9 + 6 context
    moved.clear()
    out.square().mean().backward()
    assert len(moved) == 2 * n_blocks
    moved.clear()
    with torch.no_grad():
        dit(**_inputs(dit))
    assert moved == []  # no checkpointing, no offloading without gradients
    dit.disable_training_checkpointing()
    _grads(dit, net)
    assert moved == []


def test_checkpointing_leaves_the_no_grad_path_unchanged(dit):
    net = create_network("networks.loha", dit, dim=4, alpha=1.0, dropout=None, network_args={})
    _randomize(net, 0.4)
    kw = _inputs(dit)
    with torch.no_grad():
        plain = dit(**kw)
    dit.enable_training_checkpointing(cpu_offload=True)
    called = []
    orig = torch.utils.checkpoint.checkpoint
    torch.utils.checkpoint.checkpoint = lambda *a, **k: called.append(1) or orig(*a, **k)
    try:
        with torch.no_grad():
            again = dit(**kw)
    finally:
        torch.utils.checkpoint.checkpoint = orig
        dit.disable_training_checkpointing()
    assert called == [] and torch.equal(again, plain)
