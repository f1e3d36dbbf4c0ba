"""The baseline criteria's scorers on hand-built tokens: what each keeps, and that random is seeded."""

import dataclasses

import numpy as np
import pytest
import torch

from luvc.compress.config import LUVCConfig
from luvc.compress.scorers import (
    SpanLayout,
    dart_scores,
    k_center_scores,
    l2_norm_scores,
    make_scorer,
    random_scores,
    ranked_scores,
)
from luvc.compress.spu import grid_residual_scores, select_tokens


def test_random_is_seeded_and_nested():
    ids = torch.arange(20)[None]
    same = random_scores(ids, seed=3, num_visual_tokens=20)
    assert torch.equal(same, random_scores(ids, seed=3, num_visual_tokens=20))
    assert not torch.equal(same, random_scores(ids, seed=4, num_visual_tokens=20))
    # a fixed order per token: the survivors of a cut keep their scores, so the next cut keeps a subset
    first = select_tokens(same, 10)[0]
    second = first[select_tokens(random_scores(first[None], 3, 20), 5)[0]]
    assert set(second.tolist()) <= set(first.tolist())
    assert set(second.tolist()) == set(select_tokens(same, 5)[0].tolist())


def test_l2_norm_keeps_the_largest_hidden_states():
    tokens = torch.ones(1, 6, 4) * torch.tensor([1.0, 5.0, 2.0, 9.0, 0.5, 3.0])[None, :, None]
    assert select_tokens(l2_norm_scores(tokens.half()), 2).tolist() == [[1, 3]]
    assert l2_norm_scores(tokens.half()).dtype == torch.float32


def test_dart_keeps_pivots_and_drops_their_duplicates_first():
    generator = torch.Generator().manual_seed(0)
    distinct = torch.randn(6, 8, generator=generator)
    pivot = distinct[0] * 10  # the largest norm: the one pivot
    tokens = torch.stack([pivot, pivot * 0.5, *distinct[1:]])[None]  # token 1 duplicates the pivot's direction
    scores = dart_scores(tokens, pivots=1)
    assert scores.shape == (1, 7) and scores.dtype == torch.float32
    assert int(scores.argmax()) == 0  # the pivot ranks first
    assert int(scores.argmin()) == 1  # its duplicate goes first
    assert select_tokens(scores, 6)[0].tolist() == [0, 2, 3, 4, 5, 6]


def test_dart_with_more_pivots_than_tokens_keeps_static_shapes():
    tokens = torch.randn(2, 3, 5)
    scores = dart_scores(tokens, pivots=8)
    assert scores.shape == (2, 3) and bool((scores > 2).all())  # every token is a pivot


def test_ranked_scores_look_up_the_request_ranking():
    ranking = torch.tensor([[0.1, 0.7, 0.3, 0.9]])
    assert ranked_scores(torch.tensor([[3, 0]]), ranking)[0].tolist() == pytest.approx([0.9, 0.1])


def _config(variant: str, **knobs) -> LUVCConfig:
    return LUVCConfig(spu_variant=variant, **knobs).resolve(4, 4)


def test_make_scorer_dispatches_and_refuses():
    tokens, ids = torch.randn(1, 4, 6), torch.arange(4)[None]
    assert make_scorer(_config("l2-norm"), 4)(tokens, ids, 0).shape == (1, 4)
    assert make_scorer(_config("spectral-residual"), 4)(tokens, ids, 0).shape == (1, 4)
    with pytest.raises(ValueError, match="ranks by attention"):
        make_scorer(_config("fastv"), 4)
    with pytest.raises(ValueError, match="ranks by attention"):
        make_scorer(_config("todre"), 4, cut=1)
    with pytest.raises(ValueError, match="token grids"):
        make_scorer(_config("spectral-residual", spu_lowpass="grid"), 4)
    with pytest.raises(ValueError, match="is not a pruning criterion"):
        make_scorer(dataclasses.replace(_config("l2-norm"), spu_variant="median"), 4)


def test_keeping_low_scores_keeps_the_complement_at_equal_budget():
    tokens, ids = torch.randn(2, 12, 8), torch.arange(12).expand(2, -1)
    high = select_tokens(make_scorer(_config("spectral-residual"), 12)(tokens, ids, 0), 6)
    low = select_tokens(make_scorer(_config("spectral-residual", spu_keep="low"), 12)(tokens, ids, 0), 6)
    for row in range(2):
        assert sorted(high[row].tolist() + low[row].tolist()) == list(range(12))


def test_grid_lowpass_sees_columns_the_raster_lowpass_mixes_up():
    """A 4x4 image, smooth in 2-D (each row the first cosine across the columns, constant down them): in raster
    order the pattern repeats every 4 tokens, a high frequency of the 16-token sequence that the raster low-pass
    cannot explain; the separable grid low-pass (2 of 4 frequencies per axis) explains it exactly. A token that breaks
    the pattern scores highest on the grid."""
    from luvc.compress.spu import _dct_rows

    row = torch.tensor(_dct_rows(4, 2)[1])
    smooth = row.repeat(4)[None, :, None] * torch.ones(1, 16, 3)
    layout = SpanLayout.of((16,), ((1, 4, 4),))
    ids = torch.arange(16)[None]
    grid = make_scorer(_config("spectral-residual", spu_lowpass="grid"), 16, layout=layout)(smooth, ids, 0)
    raster = make_scorer(_config("spectral-residual"), 16)(smooth, ids, 0)
    assert float(grid.max()) < 1e-6 < 0.1 < float(raster.max())  # what the 2-D low-pass explains, the raster cannot
    odd = smooth.clone()
    odd[0, 9] += 5.0
    scores = make_scorer(_config("spectral-residual", spu_lowpass="grid"), 16, layout=layout)(odd, ids, 0)
    assert int(scores.argmax()) == 9


def test_grid_lowpass_counts_pruned_tokens_as_zeros():
    """On a subset of the grid the projection is the full grid's restricted to the tokens present."""
    from luvc.compress.spu import _axis_lowpass

    tokens = torch.randn(1, 16, 3)
    kept = torch.tensor([[0, 2, 5, 7, 8, 13, 15]])
    present = torch.gather(tokens, 1, kept[..., None].expand(-1, -1, 3))
    scores = grid_residual_scores(present, kept, (1, 4, 4), 0.25)
    full = torch.tensor(np.kron(_axis_lowpass(4, 0.25), _axis_lowpass(4, 0.25)))
    zero_filled = torch.zeros(16, 3)
    zero_filled[kept[0]] = present[0]
    expected = (present[0] - (full @ zero_filled)[kept[0]]).square().sum(-1)
    assert scores[0].tolist() == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-6)


def test_k_center_picks_a_diverse_subset():
    """Three tight clusters of unequal size: the first three picks are one token of each cluster."""
    torch.manual_seed(0)
    centres = torch.eye(3, 8) * 10
    members = [0] * 6 + [1] * 3 + [2] * 2
    tokens = (centres[members] + 0.01 * torch.randn(len(members), 8))[None]
    order = k_center_scores(tokens)[0].argsort(descending=True).tolist()
    assert {members[i] for i in order[:3]} == {0, 1, 2}
    assert sorted(k_center_scores(tokens)[0].tolist()) == [float(v) for v in range(1, 12)]
