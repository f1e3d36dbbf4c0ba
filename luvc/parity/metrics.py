"""Parity metrics: pure NumPy functions of a reference and a candidate (the reference always comes second)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _f64(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


def relative_error(actual, expected) -> float:
    """``max |actual - expected| / max |expected|`` (0 when both are all zero)."""
    actual, expected = _f64(actual), _f64(expected)
    if actual.shape != expected.shape:
        return float("inf")
    scale = np.abs(expected).max(initial=0.0)
    difference = np.abs(actual - expected).max(initial=0.0)
    return float(difference / scale) if scale > 0 else float(difference > 0) * float("inf")


def max_abs_differences(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """``max |candidate - reference|`` per named ``(candidate, reference)`` pair, by Polygraphy's comparator
    (``inf`` where the shapes differ)."""
    from polygraphy.comparator import IterationResult, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.CRITICAL  # verdicts are ours; Polygraphy only measures
    compare = SimpleCompareFunc(check_shapes=True, atol=np.inf, rtol=np.inf, check_error_stat="max")
    candidate = IterationResult({name: np.asarray(a) for name, (a, _) in pairs.items()}, runner_name="candidate")
    reference = IterationResult({name: np.asarray(b) for name, (_, b) in pairs.items()}, runner_name="reference")
    results = compare(candidate, reference)
    differences = {}
    for name in pairs:
        found = getattr(results[name], "max_absdiff", None)  # a shape mismatch gives a bare failed result
        differences[name] = np.inf if found is None else float(found)
    return differences


def cosine(actual, expected) -> float:
    """Cosine similarity of the flattened tensors (1 when both are all zero)."""
    actual, expected = _f64(actual).ravel(), _f64(expected).ravel()
    if actual.shape != expected.shape:
        return 0.0
    norms = np.linalg.norm(actual) * np.linalg.norm(expected)
    if norms == 0:
        return 1.0 if not actual.any() and not expected.any() else 0.0
    return float(actual @ expected / norms)


def row_cosines(actual, expected) -> np.ndarray:
    """Cosine similarity of each vector along the last axis."""
    actual, expected = _f64(actual), _f64(expected)
    norms = np.linalg.norm(actual, axis=-1) * np.linalg.norm(expected, axis=-1)
    return np.where(norms > 0, (actual * expected).sum(-1) / np.maximum(norms, 1e-300), 1.0)


def jaccard(actual: Sequence[int], expected: Sequence[int]) -> float:
    """``|A & B| / |A | B|`` of two index sets (1 when both are empty)."""
    ours, theirs = set(np.asarray(actual).ravel().tolist()), set(np.asarray(expected).ravel().tolist())
    union = ours | theirs
    return len(ours & theirs) / len(union) if union else 1.0


def log_softmax(logits) -> np.ndarray:
    logits = _f64(logits)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kl_divergence(candidate_logits, reference_logits) -> np.ndarray:
    """``KL(reference || candidate)`` of the softmax distributions along the last axis, in nats."""
    reference, candidate = log_softmax(reference_logits), log_softmax(candidate_logits)
    return (np.exp(reference) * (reference - candidate)).sum(axis=-1)


def near_tie_share(scores, budget: int, margin: float) -> float:
    """Share of tokens whose score lies within ``margin * (largest absolute score)`` of the cut between the
    ``budget``-th and the next score: the tokens a relative numeric error of that size could swap across the cut (as
    ``luvc.parity.selection`` judges a swap). ``scores``: ``(B, n)``."""
    scores = _f64(scores)
    n = scores.shape[-1]
    if not 0 < budget < n:
        return 0.0
    ordered = -np.sort(-scores, axis=-1)
    cut = (ordered[:, budget - 1] + ordered[:, budget]) / 2
    scale = np.maximum(np.abs(scores).max(axis=-1), 1e-30)
    close = np.abs(scores - cut[:, None]) <= margin * scale[:, None]
    return float(close.mean())


def token_agreement(actual, expected) -> float:
    """Share of positions where two ``(B, T)`` token arrays agree."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    steps = min(actual.shape[-1], expected.shape[-1])
    if steps == 0:
        return 1.0
    return float((actual[..., :steps] == expected[..., :steps]).mean())


def agreeing_steps(actual, expected) -> int:
    """Steps up to and including the first differing token of two ``(B, T)`` greedy runs: the steps whose logits
    were computed from identical prefixes in both."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    steps = min(actual.shape[-1], expected.shape[-1])
    differs = np.flatnonzero((actual[..., :steps] != expected[..., :steps]).reshape(-1, steps).any(axis=0))
    return int(differs[0]) + 1 if differs.size else steps
