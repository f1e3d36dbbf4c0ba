"""Kept visual indices judged the way a precision allows: a swap at a near tie is no error, nor is what follows it.

An SPU cut keeps the ``budget`` best-scoring visual tokens. Where two tokens' scores differ by less than the numeric
noise of the backend, the backend may keep the other one: that swap is a *tie*. A spectral score depends on every
token scored with it (the low-pass runs along the token axis), so once the two runs enter a cut with different
tokens, every later cut ranks a different set and its differences are *downstream* of the first swap, already judged
where it happened (as generated tokens are compared only while their prefixes agree). A *non-tie* swap is a token
kept by one run and not the other, at a cut both runs entered with the same tokens, whose reference score lies
farther from the cut than the noise: that is an error of the export.

Per SPU layer the judged overlap is ``1 - non-tie tokens / |A | B|`` (the Jaccard index when nothing is a tie), beside
the raw Jaccard index and the counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from luvc.parity.alignment import first_swap


@dataclasses.dataclass
class LayerSelection:
    """One SPU layer's kept indices over the samples: worst raw and judged overlap, and the differing tokens by kind
    (each token kept by one run and not the other counts once)."""

    layer: int
    jaccard: float = 1.0
    judged: float = 1.0
    ties: int = 0
    non_ties: int = 0
    downstream: int = 0

    def add(self, raw: float, judged: float, ties: int, non_ties: int, downstream: int) -> None:
        self.jaccard, self.judged = min(self.jaccard, raw), min(self.judged, judged)
        self.ties += ties
        self.non_ties += non_ties
        self.downstream += downstream


def score_gaps(spans: Sequence[tuple[np.ndarray, int, np.ndarray]], row: int) -> dict[int, float]:
    """Original visual index -> distance of its reference score from its span's cut, in units of that span's largest
    absolute score (a score's numeric error is relative to its size, as the noise it is compared with), for one batch
    ``row``. ``spans``: ``(scores (B, n), budget, scored ids (B, n))`` per image span."""
    gaps: dict[int, float] = {}
    for scores, budget, ids in spans:
        values = np.asarray(scores[row], dtype=np.float64)
        if not 0 < budget < values.size:
            continue  # a span kept whole or cut to nothing has no cut to be near
        ordered = np.sort(values)[::-1]
        cut = (ordered[budget - 1] + ordered[budget]) / 2
        scale = max(float(np.abs(values).max()), 1e-30)
        gaps.update(zip(np.asarray(ids[row]).tolist(), (np.abs(values - cut) / scale).tolist()))
    return gaps


def judge_selection(
    candidate: Mapping[int, np.ndarray],
    reference: Mapping[int, np.ndarray],
    scores: Mapping[int, Sequence[tuple[np.ndarray, int, np.ndarray]]],
    noise: float,
    selections: dict[int, LayerSelection],
) -> None:
    """Add one sample's kept indices (SPU layer -> ``(B, k)``, candidate and reference) to ``selections``. A swapped
    token is a tie when its reference score lies within ``noise`` times the span's largest score of the cut."""
    layers = sorted(layer for layer, kept in reference.items() if kept.size)  # zero budgets: no cut
    batch = reference[layers[0]].shape[0] if layers else 0
    for row in range(batch):
        swap = first_swap(candidate, reference, row)  # the cuts after it ranked other tokens in each run
        for layer in layers:
            ours = set(np.asarray(candidate[layer][row]).tolist()) if layer in candidate else set()
            theirs = set(np.asarray(reference[layer][row]).tolist())
            differing, union = ours ^ theirs, len(ours | theirs)
            ties = non_ties = downstream = 0
            if layer > swap:
                downstream = len(differing)
            else:
                gaps = score_gaps(scores.get(layer, ()), row)
                ties = sum(1 for token in differing if gaps.get(token, np.inf) <= noise)
                non_ties = len(differing) - ties
            raw, judged = (len(ours & theirs) / union, 1.0 - non_ties / union) if union else (1.0, 1.0)
            selection = selections.setdefault(layer, LayerSelection(layer))
            selection.add(raw, judged, ties, non_ties, downstream)
