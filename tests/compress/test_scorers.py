"""The baseline criteria's scorers on hand-built tokens: what each keeps, and that random is seeded."""

import pytest
import torch

from luvc.compress.scorers import dart_scores, l2_norm_scores, make_scorer, random_scores, ranked_scores
from luvc.compress.spu import select_tokens


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


def test_make_scorer_dispatches_and_refuses():
    tokens, ids = torch.randn(1, 4, 6), torch.arange(4)[None]
    assert make_scorer("l2-norm", 0.25, 0, 8, 4)(tokens, ids).shape == (1, 4)
    assert make_scorer("spectral-residual", 0.25, 0, 8, 4)(tokens, ids).shape == (1, 4)
    with pytest.raises(ValueError, match="ranks by attention"):
        make_scorer("fastv", 0.25, 0, 8, 4)
    with pytest.raises(ValueError, match="is not a pruning criterion"):
        make_scorer("median", 0.25, 0, 8, 4)
