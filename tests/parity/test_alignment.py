"""Cache rows by the token they hold: after a near-tie swap, the KV check compares the tokens both runs kept."""

import numpy as np

from luvc.parity.alignment import aligned_cache_pairs, common_rows, row_tokens, visual_ids_entering


def test_rows_of_two_spans_after_a_cut():
    # prompt: 2 text, span A (4 tokens: ids 0-3), 1 text, span B (3 tokens: ids 4-6), 2 text = 12 rows
    spans = ((2, 4), (7, 3))
    # a cut kept A's 1 and 3 and B's 5: the sequence is 2 text, [1, 3], 1 text, [5], 2 text = 8 rows
    assert row_tokens(8, spans, np.array([1, 3, 5])).tolist() == [-1, -2, 1, 3, -3, 5, -4, -5]
    assert row_tokens(12, spans, np.arange(7)).tolist() == [-1, -2, 0, 1, 2, 3, -3, 4, 5, 6, -4, -5]


def test_common_rows_pair_the_tokens_both_hold_in_the_references_order():
    candidate, reference = np.array([-1, 1, 4, 5, -2]), np.array([-1, 1, 2, 5, -2])
    candidate_rows, reference_rows = common_rows(candidate, reference)
    assert reference_rows.tolist() == [0, 1, 3, 4] and candidate_rows.tolist() == [0, 1, 3, 4]
    shifted = np.array([-1, 2, 5, 7, -2])  # 2 and 5 moved up one row: still paired by token
    assert common_rows(shifted, reference)[0].tolist() == [0, 1, 2, 4]


def test_the_cut_in_force_is_the_last_at_or_before_the_layer():
    kept = {2: np.array([[0, 1, 3]]), 4: np.array([[1]])}
    assert visual_ids_entering(1, kept, 5, 1).tolist() == [[0, 1, 2, 3, 4]]
    assert visual_ids_entering(3, kept, 5, 1).tolist() == [[0, 1, 3]]
    assert visual_ids_entering(6, kept, 5, 1).tolist() == [[1]]
    assert visual_ids_entering(0, {}, 3, 2).tolist() == [[0, 1, 2], [0, 1, 2]]  # no cut (LUVC off), a batch of 2


def test_a_swapped_token_leaves_its_row_out_and_the_rest_compares_equal():
    rng = np.random.default_rng(0)
    spans = ((1, 4),)  # 1 text, 4 visual (ids 0-3), 1 text
    full = rng.normal(size=(1, 2, 6, 3))  # layer 0: every token
    reference_cut = full[:, :, [0, 1, 3, 5]]  # layer 1: kept ids 0 and 2 (rows 1 and 3 of the prompt)
    candidate_cut = full[:, :, [0, 1, 4, 5]].copy()  # kept ids 0 and 3 instead: one swap
    reference = {"present.0.key": full, "present.1.key": reference_cut}
    candidate = {"present.0.key": full.copy(), "present.1.key": candidate_cut}
    pairs, left_out, downstream = aligned_cache_pairs(
        candidate, reference, "key", {1: np.array([[0, 3]])}, {1: np.array([[0, 2]])}, spans
    )
    assert (left_out, downstream) == (1, 0)
    assert [pair[1].shape for pair in pairs] == [(2, 6, 3), (2, 3, 3)]
    assert all(np.array_equal(a, b) for a, b in pairs)  # the swapped row was the only difference
    pairs, left_out, _ = aligned_cache_pairs(
        candidate, reference, "key", {1: np.array([[0, 2]])}, {1: np.array([[0, 2]])}, spans
    )
    assert left_out == 0 and not np.array_equal(*pairs[1])  # same ids claimed: every row compared, and it differs


def test_the_layers_after_a_swap_are_left_out():
    rng = np.random.default_rng(1)
    spans = ((1, 4),)
    full = rng.normal(size=(1, 2, 6, 3))
    reference = {"present.0.key": full, "present.1.key": full[:, :, [0, 1, 3, 5]], "present.2.key": full[:, :, :3]}
    candidate = {name: value + 1.0 for name, value in reference.items()}  # would fail any tensor check
    candidate["present.0.key"], candidate["present.1.key"] = full.copy(), full[:, :, [0, 1, 4, 5]].copy()
    kept = ({1: np.array([[0, 3]]), 2: np.array([[0]])}, {1: np.array([[0, 2]]), 2: np.array([[0]])})
    pairs, left_out, downstream = aligned_cache_pairs(candidate, reference, "key", *kept, spans)
    # layer 1 swapped id 2 for id 3: its common rows compare; layer 2 attended another context and is left out
    assert (left_out, downstream) == (1, 1)
    assert len(pairs) == 2 and all(np.array_equal(a, b) for a, b in pairs)
