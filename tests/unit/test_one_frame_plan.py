"""One-frame layouts (the recipes of inference.md §6) and the auto-resize bucket."""

from __future__ import annotations

import pytest

from framepack_cli.options.generate import parse_one_frame
from framepack_cli.plan.one_frame import auto_resize_bucket, one_frame_layout
from tests.conftest import golden


def layout(text: str, n: int, window: int = 9):
    s = parse_one_frame(text)
    return one_frame_layout(window, n, target_index=s.target_index, control_index=s.control_index,
                            no_post=s.no_post, no_2x=s.no_2x, no_4x=s.no_4x)


def test_default_recipe():
    lay = layout("default", 1)
    assert (lay.latent_index, lay.clean_indices, lay.has_post) == (9, (0, 10), True)
    assert lay.indices_2x == (11, 12) and lay.indices_4x == tuple(range(13, 29))


def test_kisekaeichi_recipe():
    lay = layout("target_index=1,control_index=0;10,no_post,no_2x,no_4x", 2)
    assert (lay.latent_index, lay.clean_indices, lay.has_post, lay.indices_2x, lay.indices_4x) == (
        1, (0, 10), False, None, None)


def test_1fmc_recipe():
    lay = layout("target_index=9,control_index=0;1,no_2x,no_4x", 2)
    assert (lay.latent_index, lay.clean_indices, lay.has_post) == (9, (0, 1, 10), True)


def test_control_index_can_set_post_and_window_scales():
    assert layout("control_index=0;13", 1).clean_indices == (0, 13)
    lay = layout("default", 1, window=5)
    assert (lay.latent_index, lay.clean_indices, lay.indices_2x) == (5, (0, 6), (7, 8))


@pytest.mark.parametrize("case, n, text", [
    ("oneframe_default", 1, "default"),
    ("oneframe_kisekaeichi", 2, "target_index=1,control_index=0;10,no_post,no_2x,no_4x"),
    ("oneframe_1fmc", 2, "target_index=9,control_index=0;1,no_2x,no_4x"),
])
def test_layout_matches_reference(case, n, text):
    t, _ = golden(f"e2e/{case}")
    lay = layout(text, n)
    assert [lay.latent_index] == t["section0.latent_indices"][0].tolist()
    assert list(lay.clean_indices) == t["section0.clean_latent_indices"][0].tolist()


def test_auto_resize_bucket():
    assert auto_resize_bucket(1000, 1000, 640, 640) == (640, 640)
    w, h = auto_resize_bucket(1920, 1080, 640, 640)
    assert w % 16 == 0 and h % 16 == 0 and w > h
    assert abs(w * h - 640 * 640) / (640 * 640) < 0.1
    w, h = auto_resize_bucket(480, 832, 832, 480)
    assert (w, h) == (480, 832)
