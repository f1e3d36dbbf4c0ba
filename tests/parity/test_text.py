"""Generated text judged as precision allows: a first differing pick within the logits' noise is a tie and what
follows it is not judged; a pick the reference preferred by more is an error from that token on."""

import numpy as np
import pytest

from luvc.parity.text import first_token_agreement, judge_text

VOCAB, STEPS = 6, 4


def _run(reference: list[int], margins: dict[int, float]):
    """Reference tokens ``(1, T)`` and step logits whose best token leads token 5 by ``margins[step]`` (1 by
    default), the other logits far below; the largest absolute logit is 1."""
    logits = np.full((1, STEPS, VOCAB), -0.5)
    for step, token in enumerate(reference):
        logits[0, step, token] = 1.0
        logits[0, step, 5] = 1.0 - margins.get(step, 1.0)
    return np.array([reference]), logits


def test_identical_text_agrees_fully():
    tokens, logits = _run([0, 1, 2, 3], {})
    text = judge_text([(tokens, tokens, logits)], noise=0.01)
    assert (text.judged_exact, text.judged_tokens, text.exact, text.tokens) == (1.0, 1.0, 1.0, 1.0)
    assert (text.ties, text.non_ties, text.downstream) == (0, 0, 0)


def test_a_pick_at_a_near_tie_and_what_follows_are_not_errors():
    reference, logits = _run([0, 1, 2, 3], {1: 0.005})
    candidate = np.array([[0, 5, 4, 4]])  # token 5 at step 1, 0.005 below the best, then another context
    text = judge_text([(candidate, reference, logits)], noise=0.01)
    assert (text.judged_exact, text.judged_tokens) == (1.0, 1.0)
    assert (text.ties, text.non_ties, text.downstream) == (1, 0, 2)
    assert text.exact == 0.0 and text.tokens == pytest.approx(0.25)  # the raw figures stay reported


def test_a_pick_beyond_the_noise_is_an_error_from_that_token_on():
    reference, logits = _run([0, 1, 2, 3], {2: 0.05})
    candidate = np.array([[0, 1, 5, 3]])
    text = judge_text([(candidate, reference, logits)], noise=0.01)
    assert (text.judged_exact, text.judged_tokens) == (0.0, pytest.approx(0.5))
    assert (text.ties, text.non_ties, text.downstream) == (0, 1, 0)
    # a flip needs the two logits to move apart by the margin, each by up to the noise: a tie up to twice the noise
    assert judge_text([(candidate, reference, logits)], noise=0.024).judged_exact == 0.0
    assert judge_text([(candidate, reference, logits)], noise=0.026).judged_exact == 1.0


def test_samples_are_averaged():
    reference, logits = _run([0, 1, 2, 3], {0: 0.5})
    wrong_first = np.array([[5, 1, 2, 3]])
    text = judge_text([(reference, reference, logits), (wrong_first, reference, logits)], noise=0.01)
    assert (text.judged_exact, text.judged_tokens, text.non_ties) == (0.5, 0.5, 1)


def test_a_first_token_at_a_near_tie_agrees_one_beyond_the_noise_does_not():
    """Level 3 judges the first token as the text is judged: PyTorch's best leads the export's pick by 0.005 of the
    largest logit (a tie under noise 0.01) in row 0 and by 0.05 (an error) in row 1; row 2 agrees."""
    reference = np.full((3, VOCAB), -0.5)
    reference[:, 0] = 1.0
    reference[0, 5], reference[1, 5] = 0.995, 0.95
    candidate = np.zeros((3, VOCAB))
    candidate[[0, 1], 5], candidate[2, 0] = 1.0, 1.0  # rows 0 and 1 pick token 5, row 2 token 0
    judged, raw, ties = first_token_agreement(candidate, reference, noise=0.01)
    assert (raw, ties) == (pytest.approx(1 / 3), 1)
    assert judged == pytest.approx(2 / 3)
    assert first_token_agreement(candidate, reference, noise=0.001) == (pytest.approx(1 / 3), pytest.approx(1 / 3), 0)
    assert first_token_agreement(candidate, reference, noise=0.026)[0] == 1.0  # 0.05 within twice the noise
