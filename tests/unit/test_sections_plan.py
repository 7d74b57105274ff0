"""Section planning: counts, paddings, index layouts (against the golden e2e per-section indices), chunks."""

from __future__ import annotations

import pytest

from framepack_cli.plan.sections import (
    HISTORY_LEN,
    decode_chunks,
    default_paddings,
    f1_layout,
    latent_paddings,
    num_sections,
    plan_f1,
    plan_vanilla,
    vanilla_layout,
)
from tests.conftest import golden


def test_section_count():
    assert num_sections(5.0, 9) == 4  # 150 / 36 = 4.17
    assert num_sections(60.0, 9) == 50
    assert num_sections(0.1, 9) == 1
    assert num_sections(5.0, 9, video_sections=3) == 3
    assert num_sections(1.0, 9) == 1  # round(0.83)
    assert num_sections(2.4, 4) == 4  # round(4.5) -> 4 (half to even, as the reference)


def test_paddings():
    assert default_paddings(1) == [0]
    assert default_paddings(4) == [3, 2, 1, 0]
    assert default_paddings(6) == [3, 2, 2, 2, 1, 0]
    assert latent_paddings(4, [0, 0]) == [0, 0, 1, 0]  # the reference crashes here; we replace the first entries
    assert latent_paddings(3, [5, 4, 3, 2, 1]) == [5, 4, 3]
    assert latent_paddings(6, [1]) == [1, 2, 2, 2, 1, 0]


def test_vanilla_plan_order():
    plan = plan_vanilla(3)
    assert [s.index for s in plan] == [2, 1, 0]
    assert [s.index_from_last for s in plan] == [-1, -2, -3]
    assert [s.latent_padding for s in plan] == [2, 1, 0]
    assert [s.is_last for s in plan] == [False, False, True]
    f1 = plan_f1(3)
    assert [s.index for s in f1] == [0, 1, 2]
    assert [s.index_from_last for s in f1] == [-3, -2, -1]
    assert [s.is_last for s in f1] == [False, False, True]


def test_layouts_contiguous():
    for pad in range(4):
        for w in (1, 5, 9, 16):
            lay = vanilla_layout(pad, w)
            allidx = [lay.clean_latent_indices[0], *range(1, 1 + pad * w), *lay.latent_indices,
                      lay.clean_latent_indices[1], *lay.clean_latent_2x_indices, *lay.clean_latent_4x_indices]
            assert allidx == list(range(1 + pad * w + w + HISTORY_LEN))
    lay = f1_layout(9)
    assert lay.clean_latent_4x_indices == tuple(range(1, 17))
    assert lay.clean_latent_2x_indices == (17, 18)
    assert lay.clean_latent_indices == (0, 19)
    assert lay.latent_indices == tuple(range(20, 29))


@pytest.mark.parametrize("case, sections, f1", [("vanilla", 2, False), ("vanilla_sections", 3, False),
                                                 ("vanilla_end_image", 2, False), ("f1", 3, True)])
def test_layouts_match_reference(case, sections, f1):
    t, meta = golden(f"e2e/{case}")
    plan = plan_f1(sections) if f1 else plan_vanilla(sections)
    assert len(plan) == meta["num_sampler_calls"]
    for s in plan:
        lay = f1_layout(9) if f1 else vanilla_layout(s.latent_padding, 9)
        pre = f"section{s.loop}."
        assert list(lay.latent_indices) == t[pre + "latent_indices"][0].tolist()
        assert list(lay.clean_latent_indices) == t[pre + "clean_latent_indices"][0].tolist()
        assert list(lay.clean_latent_2x_indices) == t[pre + "clean_latent_2x_indices"][0].tolist()
        assert list(lay.clean_latent_4x_indices) == t[pre + "clean_latent_4x_indices"][0].tolist()


def test_decode_chunks():
    assert decode_chunks(37, 9) == [(0, 19), (10, 28), (19, 37), (28, 37)]
    assert decode_chunks(19, 9) == [(0, 19), (10, 19)]
    assert decode_chunks(10, 9) == [(0, 10)]
    assert decode_chunks(1, 9) == [(0, 1)]
    # 20 sections: every latent is covered and chunks step by one window
    ch = decode_chunks(1 + 20 * 9, 9)
    assert ch[-1][1] == 181 and len(ch) == 20
