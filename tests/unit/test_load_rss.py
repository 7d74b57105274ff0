"""System RAM while loading: a DiT never holds two copies (issue 12).

A full-width synthetic DiT (3072 wide, 24 heads, one dual and one single block of the real structure, one
refiner block; written as bf16 zeros into tmp at test time) is loaded by `load_dit` in a fresh process; the
growth of its peak RSS (VmHWM) must stay within 1.15x the weights in the run's dtype, for a single file and for
shards, loaded as bfloat16 (as stored) and as float32 (a cast while loading), and with fp8: `--fp8` /
`--fp8_scaled` converting the bf16 file while loading, and pre-quantised fp8 files (plain and scaled) loading
as stored.
"""

from __future__ import annotations

import pytest
import torch

from framepack_cli.models.loading import load_state_dict
from tests.fullwidth_dit import measure_in_subprocess, write_fullwidth_dit

LIMIT = 1.15


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("fullwidth")
    return {"single": write_fullwidth_dit(root / "single"), "shards": write_fullwidth_dit(root / "shards", shards=3)}


@pytest.mark.parametrize("layout", ["single", "shards"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_peak_rss_while_loading_a_fullwidth_dit(checkpoints, layout, dtype):
    res = measure_in_subprocess(checkpoints[layout], dtype)
    assert res["weights"] > 1.4e9  # really full width: about 0.76 B parameters
    assert res["ratio"] <= LIMIT, (
        f"{layout} {dtype}: peak RSS grew by {(res['peak'] - res['before']) / 2**30:.2f} GiB for "
        f"{res['weights'] / 2**30:.2f} GiB of weights ({res['ratio']:.2f}x)")


@pytest.fixture(scope="module")
def prequantised(tmp_path_factory):
    root = tmp_path_factory.mktemp("fullwidth_fp8")
    return {mode: write_fullwidth_dit(root / mode, fp8=mode) for mode in ("fp8", "fp8_scaled")}


def _check_fp8(res, what):
    grew = res["peak"] - res["before"]
    assert res["ratio"] <= LIMIT, f"{what}: {grew / 2**30:.2f} GiB for {res['weights'] / 2**30:.2f} GiB of weights"
    # Beyond the fp8 model itself only per-tensor work (a few float32 copies of one weight), never the model.
    assert grew - res["model"] <= 3 * res["largest_f32"], (
        f"{what}: {grew / 2**30:.2f} GiB for a model of {res['model'] / 2**30:.2f} GiB")


@pytest.mark.parametrize("mode", ["fp8", "fp8_scaled"])
def test_peak_rss_converting_to_fp8_while_loading(checkpoints, mode):
    res = measure_in_subprocess(checkpoints["single"], "bfloat16", kwargs={"fp8": mode})
    assert res["model"] < 0.85 * res["weights"]  # the block Linears really are fp8
    _check_fp8(res, f"--{mode}")


@pytest.mark.parametrize("mode", ["fp8", "fp8_scaled"])
def test_peak_rss_loading_a_prequantised_fp8_file(prequantised, mode):
    res = measure_in_subprocess(prequantised[mode], "bfloat16")
    assert res["model"] < 0.85 * res["weights"]
    _check_fp8(res, f"pre-quantised {mode}")
    assert res["model_ratio"] <= 1.05  # loaded as stored: no upcast copy


def test_streamed_load_casts_per_key_and_skips_unwanted_keys(tmp_path):
    from safetensors.torch import save_file

    sd = {"a.weight": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), "b.idx": torch.tensor([1, 2, 3]),
          "proj_out.weight": torch.ones(2, dtype=torch.bfloat16), "other.x": torch.zeros(4),
          "empty": torch.zeros(0, 3, dtype=torch.bfloat16)}
    save_file(sd, str(tmp_path / "m.safetensors"))
    out = load_state_dict([tmp_path / "m.safetensors"], dtype=torch.float16, keep=lambda k: k != "other.x",
                          dtype_for=lambda k, d: torch.float32 if k.startswith("proj_out.") else torch.float16)
    assert set(out) == {"a.weight", "b.idx", "proj_out.weight", "empty"}
    assert out["a.weight"].dtype == torch.float16 and out["a.weight"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert out["b.idx"].dtype == torch.int64 and out["b.idx"].tolist() == [1, 2, 3]
    assert out["proj_out.weight"].dtype == torch.float32 and out["empty"].shape == (0, 3)
    # Tensors converted through the shared staging buffer are independent copies.
    plain = load_state_dict([tmp_path / "m.safetensors"], dtype=torch.float32)
    assert plain["a.weight"].tolist() == [[0, 1, 2], [3, 4, 5]] and plain["proj_out.weight"].tolist() == [1, 1]


def test_truncated_file_is_one_clear_error(tmp_path):
    from safetensors.torch import save_file

    from framepack_cli.errors import ModelFormatError

    path = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_state_dict([path])
