"""The trainable LoRA network (models/lora/network.py) against the reference's goldens (train/ in the golden set)."""

from __future__ import annotations

import datetime
import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from framepack_cli.errors import FramepackError
from framepack_cli.models.lora.network import (
    LoraNetwork,
    modelspec_metadata,
    parse_network_args,
    safetensors_hashes,
    training_metadata,
)
from tests.conftest import GOLDEN, MODELS

pytestmark = pytest.mark.skipif(not (MODELS / "dit_single.safetensors").is_file(), reason="golden models missing")

SAVED = GOLDEN / "train" / "lora_saved.safetensors"
LORA_TINY = MODELS / "lora_tiny.safetensors"


@pytest.fixture
def dit():
    from framepack_cli.models.transformer import load_dit

    return load_dit(MODELS / "dit_single.safetensors")


@pytest.fixture(scope="module")
def saved_json() -> dict:
    return json.loads((GOLDEN / "train" / "lora_saved.json").read_text())


def _meta(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as h:
        return dict(h.metadata())


def _golden_values(saved_json: dict) -> dict[str, str]:
    """The toy run's `ss_*` values of the golden file, without the hashes."""
    return {k: v for k, v in saved_json["metadata"].items() if k.startswith("ss_")}


# --------------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------------


def test_targets_are_the_golden_34_modules(dit, saved_json):
    net = LoraNetwork(dit, 4, 1.0)
    assert sorted(net.module_names) == sorted(saved_json["modules"])
    assert len(net.loras) == saved_json["n_modules"] == 34
    state = net.state_dict()
    assert set(state) == set(saved_json["keys"])
    for key, info in saved_json["keys"].items():
        assert list(state[key].shape) == info["shape"], key
        assert str(state[key].dtype).removeprefix("torch.") == info["dtype"], key
    # no modulation linear, no refiner / embedder
    assert not any("norm" in n or "refiner" in n or "embedder" in n for n in net.module_names)


def test_lora_params_trainable_float32_original_frozen_and_zero_init_is_identity(dit):
    x = torch.randn(2, 7, dit.transformer_blocks[0].attn.to_q.in_features)
    base = dit.transformer_blocks[0].attn.to_q(x)
    net = LoraNetwork(dit, 4, 1.0)
    params = list(net.trainable_parameters())
    assert len(params) == 68 and all(p.requires_grad and p.dtype == torch.float32 for p in params)
    assert [n for n, _ in net.named_parameters()] and not any(b.requires_grad for b in net.buffers())
    to_q = dit.transformer_blocks[0].attn.to_q
    assert not to_q.weight.requires_grad
    assert torch.equal(to_q(x), base)  # up initialised to zeros
    lora = next(x for x in net.loras if x.path == "transformer_blocks.0.attn.to_q")
    with torch.no_grad():
        lora.lora_up.weight.normal_()
    lora_out = to_q(x)
    expected = base + (x @ lora.lora_down.weight.T @ lora.lora_up.weight.T) * (1.0 / 4)
    torch.testing.assert_close(lora_out, expected, rtol=1e-5, atol=1e-5)
    net.set_multiplier(0.0)
    assert torch.equal(to_q(x), base)
    net.set_multiplier(1.0)
    net.remove_from_model()
    assert "forward" not in to_q.__dict__ and torch.equal(to_q(x), base)


def test_exclude_and_include_patterns(dit):
    net = LoraNetwork(dit, 4, 1.0, exclude_patterns=[r".*attn.*"], apply=False)
    assert net.module_names and not any("attn" in n for n in net.module_names)
    assert len(net.loras) == 34 - 4 * 2 * 2 - 3 * 2  # 8 attn per dual block, 3 per single block
    net2 = LoraNetwork(dit, 4, 1.0, include_patterns=[r"transformer_blocks\.0\.norm1\.linear"], apply=False)
    assert "lora_unet_transformer_blocks_0_norm1_linear" in net2.module_names and len(net2.loras) == 35
    with pytest.raises(FramepackError, match=r"include_patterns: invalid regular expression '\['"):
        LoraNetwork(dit, 4, 1.0, include_patterns=["["])
    with pytest.raises(FramepackError, match="leave no module to train"):
        LoraNetwork(dit, 4, 1.0, exclude_patterns=[".*"])


def test_network_args_parsing():
    assert parse_network_args(["rank_dropout=0.1", "exclude_patterns=[r'.*ff.*']"]) == {
        "rank_dropout": "0.1", "exclude_patterns": "[r'.*ff.*']"}
    with pytest.raises(FramepackError, match=r"--network_args: 'rank_dropout' is not key=value"):
        parse_network_args(["rank_dropout"])


def test_string_pattern_list_as_network_args_gives(dit):
    net = LoraNetwork(dit, 4, 1.0, exclude_patterns="[r'.*ff.*']", apply=False)
    assert not any("_ff_" in n for n in net.module_names)
    with pytest.raises(FramepackError, match=r"exclude_patterns=\[oops is not a Python list"):
        LoraNetwork(dit, 4, 1.0, exclude_patterns="[oops", apply=False)


def test_dropouts_only_in_training_mode(dit):
    net = LoraNetwork(dit, 4, 1.0, dropout=0.5, rank_dropout=0.5, module_dropout=0.5)
    with torch.no_grad():
        for lora in net.loras:
            lora.lora_up.weight.normal_()
    to_q = dit.transformer_blocks[0].attn.to_q
    x = torch.randn(3, 5, to_q.in_features)
    net.eval()
    assert torch.equal(to_q(x), to_q(x))
    net.train()
    torch.manual_seed(0)
    outs = {tuple(to_q(x).flatten()[:4].tolist()) for _ in range(6)}
    assert len(outs) > 1


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def test_save_reproduces_golden_file(dit, saved_json, tmp_path):
    net = LoraNetwork(dit, 4, 1.0)
    net.load_weights(SAVED)  # the golden tensors -> identical payload -> identical model hash
    meta = training_metadata(_golden_values(saved_json), timestamp=saved_json["timestamp_used"], title="tiny_lora")
    out = tmp_path / "tiny_lora.safetensors"
    written = net.save_weights(out, dtype=torch.float32, metadata=meta)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny_lora.safetensors"]  # no temp file left

    golden_tensors, mine = load_file(SAVED), load_file(out)
    assert set(mine) == set(golden_tensors)
    for key, ref in golden_tensors.items():
        assert mine[key].shape == ref.shape and mine[key].dtype == ref.dtype, key
        assert torch.equal(mine[key], ref), key
    for key, info in saved_json["keys"].items():
        if key.endswith(".alpha"):
            assert mine[key].item() == info["value"]

    got = _meta(out)
    assert got == written
    assert set(got) == set(saved_json["metadata"])
    ref = dict(saved_json["metadata"])
    # modelspec.date is local time of the save timestamp (timezone dependent)
    assert got.pop("modelspec.date") == datetime.datetime.fromtimestamp(1700000060).isoformat()
    ref.pop("modelspec.date")
    assert got == ref  # includes sshs_model_hash and sshs_legacy_hash 'e3b0c442'


def test_fresh_network_save_key_set_shapes_alpha(dit, saved_json, tmp_path):
    net = LoraNetwork(dit, 4, 1.0)
    out = tmp_path / "fresh.safetensors"
    net.save_weights(out, metadata=training_metadata({"network_dim": 4}, timestamp=0.0, title="fresh"))
    mine = load_file(out)
    assert {k: [list(v.shape), str(v.dtype)[6:]] for k, v in mine.items()} == {
        k: [v["shape"], v["dtype"]] for k, v in saved_json["keys"].items()}
    assert all(v.item() == 1.0 for k, v in mine.items() if k.endswith(".alpha"))
    assert all(not v.any() for k, v in mine.items() if k.endswith("lora_up.weight"))
    meta = _meta(out)
    assert meta["ss_network_dim"] == "4" and meta["modelspec.title"] == "fresh"
    assert (meta["sshs_model_hash"], meta["sshs_legacy_hash"]) == safetensors_hashes(mine, meta)


def test_save_dtype_applies_to_every_tensor(dit, tmp_path):
    net = LoraNetwork(dit, 4, 1.0)
    out = tmp_path / "bf16.safetensors"
    net.save_weights(out, dtype=torch.bfloat16)
    assert {v.dtype for v in load_file(out).values()} == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in net.parameters())  # the network itself stays float32


def test_legacy_hash_of_a_file_over_1_mib(dit, tmp_path):
    net = LoraNetwork(dit, 256, 1.0, apply=False)  # > 1 MiB of tensors
    out = tmp_path / "big.safetensors"
    meta = net.save_weights(out, metadata={"ss_seed": "1", "modelspec.title": "x"})
    raw = out.read_bytes()
    assert len(raw) > 0x110000
    # the legacy hash is over the file serialized with the ss_* metadata only
    import hashlib

    from safetensors.torch import save

    ss_only = save(load_file(out), {"ss_seed": "1"})
    assert meta["sshs_legacy_hash"] == hashlib.sha256(ss_only[0x100000:0x110000]).hexdigest()[:8]
    assert meta["sshs_legacy_hash"] != "e3b0c442"


def test_modelspec_and_no_metadata():
    spec = modelspec_metadata(1700000060.5, None, "960,544", timesteps=(0, 500))
    assert spec["modelspec.title"] == "LoRA@1700000060.5"
    assert spec["modelspec.resolution"] == "960x544" and spec["modelspec.timestep_range"] == "0,500"
    assert spec["modelspec.architecture"] == "framepack/lora" and spec["modelspec.sai_model_spec"] == "1.0.0"
    assert "modelspec.author" not in spec
    kept = training_metadata({"network_dim": 4, "network_alpha": 1.0, "network_module": "networks.lora_framepack",
                              "base_model_version": "framepack", "seed": 42, "training_comment": None},
                             timestamp=0, no_metadata=True)
    assert kept == {"ss_network_dim": "4", "ss_network_alpha": "1.0", "ss_network_module": "networks.lora_framepack",
                    "ss_base_model_version": "framepack"}
    assert training_metadata({"training_comment": None}, timestamp=0)["ss_training_comment"] == "None"


# --------------------------------------------------------------------------------------------------
# Loading initial weights
# --------------------------------------------------------------------------------------------------


def test_load_weights_musubi_file(dit):
    net = LoraNetwork(dit, 4, 2.0)
    report = net.load_weights(LORA_TINY)
    assert len(report.loaded) == 34 and report.missing == [] and report.format == "musubi-framepack"
    ref = load_file(LORA_TINY)
    for key, value in net.state_dict().items():
        assert torch.equal(value, ref[key].float()), key


def test_load_weights_alpha_sets_the_scale(dit, tmp_path):
    ref = load_file(LORA_TINY)
    changed = {k: (torch.tensor(1.0) if k.endswith(".alpha") else v) for k, v in ref.items()}
    path = tmp_path / "alpha1.safetensors"
    from safetensors.torch import save_file

    save_file(changed, str(path))
    net = LoraNetwork(dit, 4, 2.0)
    net.load_weights(path)
    assert {lora.scale for lora in net.loras} == {0.25}


def test_load_weights_rank_mismatch_names_the_module(dit):
    net = LoraNetwork(dit, 8, 1.0)
    with pytest.raises(FramepackError) as e:
        net.load_weights(LORA_TINY)
    assert re.search(r"--network_weights: .*lora_tiny\.safetensors: shapes do not match for 34 module\(s\): "
                     r"lora_unet_single_transformer_blocks_0_attn_to_k down/up \[4, 128\]/\[128, 4\], "
                     r"network \[8, 128\]/\[128, 8\]", e.value.message), e.value.message
    assert "(+29 more)" in e.value.message


def test_load_weights_module_not_in_network(dit):
    net = LoraNetwork(dit, 4, 1.0, exclude_patterns=[r".*ff.*"])
    with pytest.raises(FramepackError, match=r"8 module\(s\) are not in this network: "
                                             r"lora_unet_transformer_blocks_0_ff_context_net_0_proj"):
        net.load_weights(LORA_TINY)


def test_load_weights_missing_file(dit, tmp_path):
    net = LoraNetwork(dit, 4, 1.0)
    with pytest.raises(FramepackError, match="--network_weights: .*nope.safetensors: no such file"):
        net.load_weights(tmp_path / "nope.safetensors")


def test_from_weights_takes_ranks_and_alphas(dit):
    net = LoraNetwork.from_weights(dit, LORA_TINY)
    assert len(net.loras) == 34 and {x.lora_dim for x in net.loras} == {4} and {x.scale for x in net.loras} == {0.5}
    ref = load_file(LORA_TINY)
    assert all(torch.equal(v, ref[k]) for k, v in net.state_dict().items())


def test_max_norm_regularization(dit):
    net = LoraNetwork(dit, 4, 1.0)
    with torch.no_grad():
        for lora in net.loras:
            lora.lora_up.weight.normal_()
    before = [((x.lora_up.weight @ x.lora_down.weight) * x.scale).norm().item() for x in net.loras]
    limit = sorted(before)[len(before) // 2]
    scaled, mean, biggest = net.max_norm_regularize(limit)
    after = [((x.lora_up.weight @ x.lora_down.weight) * x.scale).norm().item() for x in net.loras]
    assert scaled == sum(b > limit for b in before)
    assert biggest == pytest.approx(limit, rel=1e-4) and max(after) == pytest.approx(limit, rel=1e-4)
    assert mean == pytest.approx(sum(after) / len(after), rel=1e-4)


def test_param_groups_loraplus(dit):
    net = LoraNetwork(dit, 4, 1.0)
    plain = net.param_groups(1e-4)
    assert len(plain) == 1 and len(plain[0]["params"]) == 68
    plus = net.param_groups(1e-4, loraplus_lr_ratio=4.0)
    assert [g["lr"] for g in plus] == [1e-4, 4e-4] and all(len(g["params"]) == 34 for g in plus)


# --------------------------------------------------------------------------------------------------
# One training step (train/step_vanilla, train/step_one_frame)
# --------------------------------------------------------------------------------------------------


def _load_cache(*names: str) -> dict[str, torch.Tensor]:
    """Cache files loaded like the trainer: dtype suffix and `_FxHxW` stripped, batch dim added."""
    batch = {}
    for name in names:
        for key, value in load_file(GOLDEN / name).items():
            key = re.sub(r"_(float32|float16|bfloat16|int64|int32|bool)$", "", key)
            key = re.sub(r"_\d+x\d+x\d+$", "", key)
            batch[key] = value.unsqueeze(0)
    return batch


def _dit_call(dit, batch: dict[str, torch.Tensor], noisy: torch.Tensor, timesteps, guidance) -> torch.Tensor:
    """The trainer's DiT call: zero 2x/4x history where the cache has the indices but no latents."""
    b, _, _, h, w = noisy.shape
    history = {}
    for scale, frames in (("2x", 2), ("4x", 16)):
        idx = batch.get(f"clean_latent_{scale}_indices")
        lat = batch.get(f"latents_clean_{scale}")
        if idx is not None and lat is None:
            lat = torch.zeros((b, 16, frames, h, w), dtype=noisy.dtype)
        history[f"clean_latents_{scale}"] = lat if idx is not None else None
        history[f"clean_latent_{scale}_indices"] = idx
    return dit(
        hidden_states=noisy, timestep=timesteps, encoder_hidden_states=batch["llama_vec"],
        encoder_attention_mask=batch["llama_attention_mask"], pooled_projections=batch["clip_l_pooler"],
        guidance=guidance, latent_indices=batch["latent_indices"], clean_latents=batch["latents_clean"],
        clean_latent_indices=batch["clean_latent_indices"], image_embeddings=batch["image_embeddings"], **history,
    )


@pytest.mark.parametrize("case", ["step_vanilla", "step_one_frame"])
def test_training_step_matches_golden(dit, case):
    step = load_file(GOLDEN / "train" / f"{case}.safetensors")
    info = json.loads((GOLDEN / "train" / f"{case}.json").read_text())
    batch = _load_cache(info["latent_cache_file"], info["text_cache_file"])
    assert {k: [list(v.shape), str(v.dtype)[6:]] for k, v in batch.items()} == info["batch_keys_after_loading"]

    net = LoraNetwork(dit, info["network"]["network_dim"], info["network"]["network_alpha"],
                      multiplier=info["network"]["multiplier"])
    net.load_weights(GOLDEN / info["network"]["weights"])
    dit.train()
    net.train()

    x0, noise, timesteps = step["in.latents"], step["in.noise"], step["in.timesteps"]
    if info["timestep_sampling"]["timestep_sampling"] == "sigma":
        t = (timesteps / 1000).view(-1, 1, 1, 1, 1)
    else:
        t = ((timesteps - 1) / 1000).view(-1, 1, 1, 1, 1)
    noisy = (1 - t) * x0 + t * noise
    torch.testing.assert_close(noisy, step["out.noisy_model_input"], atol=1e-6, rtol=0)
    assert step["in.guidance"].tolist() == [1000.0]
    pred = _dit_call(dit, batch, noisy, timesteps, step["in.guidance"])
    torch.testing.assert_close(pred, step["out.model_pred"], atol=2e-4, rtol=1e-3)
    loss = torch.nn.functional.mse_loss(pred, noise - x0)
    assert loss.item() == pytest.approx(step["out.loss"].item(), rel=1e-4)
    loss.backward()
    assert not any(p.grad is not None for p in dit.parameters())  # the DiT stays frozen
    n = 0
    for lora in net.loras:
        for part in ("lora_down", "lora_up"):
            ref = step[f"grad.{lora.lora_name}.{part}.weight"]
            got = getattr(lora, part).weight.grad
            tol = 1e-5 + 2e-3 * ref.abs().max().item()
            assert (got - ref).abs().max().item() <= tol, f"{lora.lora_name}.{part}"
            n += 1
    assert n == info["n_grad_tensors"] == 68


def test_load_weights_diffusers_layout(dit, tmp_path):
    from safetensors.torch import save_file

    ref = load_file(LORA_TINY)
    net = LoraNetwork(dit, 4, 2.0)
    by_name = {x.lora_name: x.path for x in net.loras}
    diffusers = {}
    for key, value in ref.items():
        name, _, part = key.partition(".")
        if part != "alpha":
            role = "lora_A" if part.startswith("lora_down") else "lora_B"
            diffusers[f"transformer.{by_name[name]}.{role}.weight"] = value
    path = tmp_path / "diffusers.safetensors"
    save_file(diffusers, str(path))
    report = net.load_weights(path)
    assert report.format == "diffusers" and len(report.loaded) == 34
    assert {x.scale for x in net.loras} == {1.0}  # no alpha in the file: alpha = rank
    state = net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ref.items() if not k.endswith(".alpha"))


def test_load_weights_keeps_modules_the_file_lacks(dit, tmp_path):
    from safetensors.torch import save_file

    ref = load_file(LORA_TINY)
    part = {k: v for k, v in ref.items() if "single_transformer_blocks" in k}
    path = tmp_path / "singles.safetensors"
    save_file(part, str(path))
    net = LoraNetwork(dit, 4, 1.0)
    report = net.load_weights(path)
    assert len(report.loaded) == 10 and len(report.missing) == 24
    assert all(n.startswith("lora_unet_transformer_blocks_") for n in report.missing)


def test_save_into_unwritable_folder_is_a_resource_error(dit, tmp_path, monkeypatch):
    import errno

    from framepack_cli.errors import ResourceError
    from framepack_cli.models.lora import save as save_mod

    real_open = save_mod.Path.open

    def full_disk(self, mode="r", *a, **k):
        if "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(self, mode, *a, **k)

    monkeypatch.setattr(save_mod.Path, "open", full_disk)
    net = LoraNetwork(dit, 4, 1.0)
    out = tmp_path / "lora.safetensors"
    with pytest.raises(ResourceError) as e:
        net.save_weights(out, flag="--output_dir")
    assert e.value.message == f"--output_dir: cannot write {out}: No space left on device"
    assert e.value.exit_code == 3 and list(tmp_path.iterdir()) == []


def test_load_state_dict_alpha_updates_the_scale(dit):
    net = LoraNetwork(dit, 4, 1.0)
    net.load_state_dict(load_file(LORA_TINY))
    assert {x.scale for x in net.loras} == {0.5} and {x.alpha.item() for x in net.loras} == {2.0}


def test_bf16_base_keeps_float32_lora_and_base_dtype_output():
    from framepack_cli.models.transformer import load_dit

    dit = load_dit(MODELS / "dit_single.safetensors", dtype=torch.bfloat16)
    net = LoraNetwork(dit, 4, 1.0)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    to_q = dit.single_transformer_blocks[0].attn.to_q
    x = torch.randn(1, 3, to_q.in_features, dtype=torch.bfloat16)
    y = to_q(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    lora = next(x for x in net.loras if x.path == "single_transformer_blocks.0.attn.to_q")
    assert lora.lora_up.weight.grad is not None and lora.lora_up.weight.grad.dtype == torch.float32
