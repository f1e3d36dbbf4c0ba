"""Generated text judged the way a precision allows: a greedy pick at a near tie is no error, nor is what follows it.

Greedy decoding takes the highest logit at each step. Where PyTorch's best token leads the token the backend picked
by less than twice the backend's numeric noise on the logits (each of the two logits may move by the noise, in
opposite directions), the backend may pick the other one: that step is a *tie*, and both runs went on from
different, equally valid prefixes. What follows is *downstream*: other contexts, not comparable token by token (as
the KV and kept-index checks leave out what follows a swap). A *non-tie* is a first differing token that PyTorch
preferred by more than that: an error of the export, and every token from it on counts as wrong.

Per sample the judged agreement is the share of generated tokens before the first non-tie (1 when the text is
identical or first differs at a tie); judged exact match is the share of samples without a non-tie. The raw exact
match and position-by-position agreement are reported beside them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from luvc.parity import metrics


@dataclasses.dataclass
class TextAgreement:
    """Generated text over the samples (each batch row counts as one): judged and raw agreement, and how the texts
    that differ first differ."""

    judged_exact: float = 1.0  # share of rows without a non-tie
    judged_tokens: float = 1.0  # mean share of a row's tokens before its first non-tie
    exact: float = 1.0  # share of rows identical
    tokens: float = 1.0  # mean share of positions identical
    ties: int = 0  # rows whose first differing token is a tie
    non_ties: int = 0
    downstream: int = 0  # tokens after a tie, not judged


def near_tie(reference_logits, reference_pick: int, candidate_pick: int, noise: float) -> bool:
    """Whether the reference's logit for ``candidate_pick`` lies within twice ``noise`` times the largest absolute
    reference logit of its own ``reference_pick``: each of the two may move by the noise, in opposite directions."""
    logits = np.asarray(reference_logits, dtype=np.float64)
    return bool(logits[reference_pick] - logits[candidate_pick] <= 2 * noise * np.abs(logits).max())


def first_token_agreement(candidate_logits, reference_logits, noise: float) -> tuple[float, float, int]:
    """First-token top-1 agreement over the rows of ``(..., V)`` logits: ``(judged, raw, ties)``, a disagreement at a
    near tie (``near_tie``) judged as agreement."""
    reference = np.asarray(reference_logits).reshape(-1, np.shape(reference_logits)[-1])
    ours = np.asarray(candidate_logits).reshape(reference.shape).argmax(-1)
    theirs = reference.argmax(-1)
    agree = ours == theirs
    ties = sum(
        near_tie(row, int(t), int(o), noise) for row, o, t, same in zip(reference, ours, theirs, agree) if not same
    )
    return float((agree.sum() + ties) / agree.size), float(agree.mean()), int(ties)


def judge_text(runs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], noise: float) -> TextAgreement:
    """Judge ``(candidate tokens (B, T), reference tokens (B, T), reference step logits (B, T, V))`` per sample. A
    first differing pick is a tie when the reference's logit for it lies within twice ``noise`` times the step's largest
    absolute reference logit of the reference's own pick."""
    judged_exact, judged_tokens, exact, tokens = [], [], [], []
    ties = non_ties = downstream = 0
    for candidate, reference, logits in runs:
        for ours, theirs, row_logits in zip(np.asarray(candidate), np.asarray(reference), np.asarray(logits)):
            steps = min(ours.size, theirs.size)
            differs = np.flatnonzero(ours[:steps] != theirs[:steps])
            exact.append(float(ours.size == theirs.size and not differs.size))
            tokens.append(metrics.token_agreement(ours[None], theirs[None]))
            step = int(differs[0]) if differs.size else steps
            if step < steps:
                if near_tie(row_logits[step], int(theirs[step]), int(ours[step]), noise):
                    ties, downstream = ties + 1, downstream + steps - step - 1
                    step = steps
                else:
                    non_ties += 1
            judged_exact.append(float(step == steps))
            judged_tokens.append(step / steps if steps else 1.0)
    if not exact:
        return TextAgreement()
    return TextAgreement(
        float(np.mean(judged_exact)),
        float(np.mean(judged_tokens)),
        float(np.mean(exact)),
        float(np.mean(tokens)),
        ties,
        non_ties,
        downstream,
    )
