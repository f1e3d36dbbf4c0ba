"""Rows of a layer's KV cache by the token they hold, so that a tensor check compares the same tokens in both runs.

After an SPU cut a layer's cache holds the text tokens and the visual tokens that survived, in prompt order. Where the
export keeps another token than PyTorch at a near tie (the selection level judges that, with the near-tie share
beside it), the rows at that place hold different tokens, and their difference is no numeric error of the export.
``common_rows`` pairs the rows of the tokens both runs hold; the rows of swapped tokens are counted, not compared.
The layers after a swap are left out whole: from there on every token attended to another context in each run, so
their caches differ by more than numeric error (the selection level judges the swap that caused it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def visual_ids_entering(layer: int, kept: Mapping[int, np.ndarray], visual_tokens: int, batch: int) -> np.ndarray:
    """``(batch, k)`` original indices of the visual tokens in ``layer``'s sequence: those kept at the last cut at
    or before it (``kept``: cut layer -> ``(batch, k)``), or every visual token before the first cut."""
    cuts = [cut for cut in kept if cut <= layer]
    if not cuts:
        return np.broadcast_to(np.arange(visual_tokens), (batch, visual_tokens))
    return kept[max(cuts)]


def row_tokens(length: int, prompt_spans: Sequence[tuple[int, int]], visual_ids: np.ndarray) -> np.ndarray:
    """``(length,)`` the token each row of a sequence holds: a visual row its original visual index (``>= 0``), a
    text row ``-1 - `` its rank among the text rows. ``prompt_spans``: ``(start, tokens)`` of each visual span in the
    prompt (before any cut); ``visual_ids``: the ``(k,)`` visual tokens still there, spans concatenated in order."""
    visual_ids = np.asarray(visual_ids)
    visual = np.zeros(length, dtype=bool)
    removed, offset = 0, 0
    for start, tokens in prompt_spans:
        count = int(((visual_ids >= offset) & (visual_ids < offset + tokens)).sum())
        visual[start - removed : start - removed + count] = True
        removed, offset = removed + tokens - count, offset + tokens
    ids = np.empty(length, dtype=np.int64)
    ids[visual] = visual_ids
    ids[~visual] = -1 - np.arange(int((~visual).sum()))
    return ids


def common_rows(candidate: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into ``candidate`` and ``reference`` (``row_tokens`` of each) of the tokens both hold."""
    _, candidate_rows, reference_rows = np.intersect1d(candidate, reference, assume_unique=True, return_indices=True)
    order = np.argsort(reference_rows)
    return candidate_rows[order], reference_rows[order]


def first_swap(candidate_kept: Mapping[int, np.ndarray], reference_kept: Mapping[int, np.ndarray], row: int) -> float:
    """The first cut layer at which batch ``row`` kept other tokens in the two runs (``inf`` when none did)."""
    for layer in sorted(reference_kept):
        ours = candidate_kept.get(layer)
        if ours is None or set(np.asarray(ours[row]).tolist()) != set(np.asarray(reference_kept[layer][row]).tolist()):
            return layer
    return float("inf")


def aligned_cache_pairs(
    candidate: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    kind: str,
    candidate_kept: Mapping[int, np.ndarray],
    reference_kept: Mapping[int, np.ndarray],
    prompt_spans: Sequence[tuple[int, int]],
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int, int]:
    """``(candidate, reference)`` pairs of every layer's ``present.{layer}.{kind}`` ``(B, heads, S, dim)``, each
    row of the batch cut to the tokens both hold, up to the layer of that row's first swap; how many rows were left
    out (swapped tokens), and how many (row, layer) caches after a swap."""
    visual_tokens = sum(tokens for _, tokens in prompt_spans)
    pairs, left_out, downstream = [], 0, 0
    batch = next(iter(reference.values())).shape[0] if reference else 0
    swaps = [first_swap(candidate_kept, reference_kept, row) for row in range(batch)]
    for name, expected in reference.items():
        if not name.endswith(f".{kind}"):
            continue
        layer, actual, batch = int(name.split(".")[1]), candidate[name], expected.shape[0]
        candidate_ids = visual_ids_entering(layer, candidate_kept, visual_tokens, batch)
        reference_ids = visual_ids_entering(layer, reference_kept, visual_tokens, batch)
        for row in range(batch):
            if layer > swaps[row]:
                downstream += 1
                continue
            tokens = [
                row_tokens(tensor.shape[2], prompt_spans, ids[row])
                for tensor, ids in ((actual, candidate_ids), (expected, reference_ids))
            ]
            candidate_rows, reference_rows = common_rows(*tokens)
            left_out += expected.shape[2] - len(reference_rows)
            pairs.append(
                (
                    np.ascontiguousarray(actual[row][:, candidate_rows]),
                    np.ascontiguousarray(expected[row][:, reference_rows]),
                )
            )
    return pairs, left_out, downstream
