"""Parity metrics on values small enough to work out by hand."""

import numpy as np
import pytest

from luvc.parity import TOLERANCES, metrics


def test_relative_error_and_cosine():
    expected = np.array([2.0, -4.0])
    assert metrics.relative_error(expected + [0.0, 0.4], expected) == pytest.approx(0.1)
    assert metrics.relative_error(np.zeros(3), np.zeros(2)) == np.inf
    assert metrics.cosine([1.0, 0.0], [0.0, 1.0]) == pytest.approx(0.0)
    assert metrics.cosine([1.0, 1.0], [2.0, 2.0]) == pytest.approx(1.0)


def test_polygraphy_differences_match_numpy_and_flag_shapes():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.5, 2.0])
    found = metrics.max_abs_differences({"same": (a, a), "off": (a, b), "shape": (a, b[:2])})
    assert found == {"same": 0.0, "off": pytest.approx(1.0), "shape": np.inf}


def test_jaccard_and_token_agreement():
    assert metrics.jaccard([1, 2, 3], [2, 3, 4]) == pytest.approx(0.5)
    assert metrics.jaccard([], []) == 1.0
    assert metrics.token_agreement(np.array([[1, 2, 3, 4]]), np.array([[1, 2, 0, 4]])) == pytest.approx(0.75)
    assert metrics.agreeing_steps(np.array([[1, 2, 3, 4]]), np.array([[1, 2, 0, 4]])) == 3
    assert metrics.agreeing_steps(np.array([[1, 2]]), np.array([[1, 2]])) == 2


def test_kl_divergence():
    uniform = np.zeros((1, 4))
    assert metrics.kl_divergence(uniform, uniform)[0] == pytest.approx(0.0)
    peaked = np.log(np.array([[0.7, 0.1, 0.1, 0.1]]))
    expected = sum(p * np.log(p / 0.25) for p in (0.7, 0.1, 0.1, 0.1))
    assert metrics.kl_divergence(uniform, peaked)[0] == pytest.approx(expected)


def test_near_tie_share_counts_tokens_close_to_the_cut():
    scores = np.array([[10.0, 5.01, 4.99, 0.0]])  # cut between 5.01 and 4.99 at 5.0; largest score 10
    assert metrics.near_tie_share(scores, 2, margin=0.01) == pytest.approx(0.5)
    assert metrics.near_tie_share(scores, 2, margin=1e-4) == 0.0
    assert metrics.near_tie_share(scores, 0, margin=0.5) == 0.0  # no cut


def test_tolerances_tighten_with_precision():
    fp32, fp16 = TOLERANCES["fp32"], TOLERANCES["fp16"]
    assert fp32.passes("relative_error", 5e-5) and not fp32.passes("relative_error", 5e-3)
    assert fp16.passes("relative_error", 5e-3) and not fp16.passes("relative_error", 5e-2)
    assert fp16.passes("kept_jaccard", 0.95) and not fp32.passes("kept_jaccard", 0.95)
