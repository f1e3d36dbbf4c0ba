"""A sliding-window layer's decode step: the positions its cache slots hold after SPU's cuts, and the first slot each
step attends to, tracked through a running batch's rows (``luvc.runtime.sliding_window`` in ``KVCache``)."""

import numpy as np
import pytest
import torch

from luvc.runtime.kv_cache import KVCache, KVLayout
from luvc.runtime.sliding_window import layer_token_index, prefill_key_positions

# two rows of 9 tokens, each with a 4-token image: the first at 2..5, the second one token later (its shift)
VISUAL_INDEX = np.array([[2, 3, 4, 5], [3, 4, 5, 6]])
KEPT = {1: np.array([[0, 2], [1, 3]])}  # the cut before layer 1 keeps two of each row's four; the one before 2 none
PRUNE_LAYERS = (1, 2)


def test_each_layer_holds_its_text_and_the_image_tokens_its_last_cut_kept():
    found = [layer_token_index(9, VISUAL_INDEX, KEPT, PRUNE_LAYERS, layer).tolist() for layer in range(3)]
    assert found[0] == [list(range(9))] * 2  # before any cut
    assert found[1] == [[0, 1, 2, 4, 6, 7, 8], [0, 1, 2, 4, 6, 7, 8]]  # kept 2 and 4 / 4 and 6
    assert found[2] == [[0, 1, 6, 7, 8], [0, 1, 2, 7, 8]]  # a cut that keeps nothing: text only
    assert layer_token_index(5, None, {}, (), 2).tolist() == [list(range(5))]  # a prompt without visuals


def test_the_keys_positions_are_the_prompts_position_ids_at_those_tokens():
    position_ids = np.arange(9)[None, :] + np.array([[0], [100]])  # distinct per row, to tell them apart
    found = prefill_key_positions(position_ids, VISUAL_INDEX, KEPT, PRUNE_LAYERS, [0, 2])
    assert set(found) == {0, 2}
    assert found[2].tolist() == [[0, 1, 6, 7, 8], [100, 101, 102, 107, 108]]


def _cache(batch: int = 2) -> KVCache:
    # layers 0 and 2 slide over 3 positions, layer 1 attends to every position
    return KVCache(batch, KVLayout(1, 2, (12, 12, 12), sliding_window=3, sliding_layers=(0, 2)))


def _presents(lengths, batch: int = 2) -> dict[str, torch.Tensor]:
    return {
        f"present.{layer}.{kind}": torch.zeros(batch, 1, length, 2)
        for layer, length in enumerate(lengths)
        for kind in ("key", "value")
    }


def test_a_step_starts_at_the_first_slot_inside_the_window_by_position():
    cache = _cache(1)
    positions = {0: np.array([[0, 1, 2, 3, 4, 5, 6]]), 2: np.array([[0, 1, 4, 6]])}  # layer 2 lost 2, 3 and 5
    cache.load(_presents([7, 7, 4], 1), key_positions=positions)
    # the step's token is at position 7: it sees positions 5, 6 and itself; slots before those are left behind
    assert cache.inputs()["kv_window_start"].tolist() == [[5], [0], [3]]
    cache.advance()  # position 7 written at slot 7 of layer 0, slot 4 of layer 2
    assert cache.inputs()["kv_window_start"].tolist() == [[6], [0], [3]]  # at 8: sees 6, 7 and itself


def test_rows_padded_on_the_right_rows_that_move_and_cleared_rows_keep_their_own_positions():
    cache = _cache()
    # two prompts of 6 and 4 tokens (the second padded by 2); layer 2 keeps all but one slot of each
    positions = {0: np.tile(np.arange(6), (2, 1)), 2: np.array([[0, 1, 2, 4, 5], [0, 2, 3, 9, 9]])}
    cache.load(_presents([6, 6, 5]), prompt_lengths=np.array([6, 4]), key_positions=positions)
    # row 0's step at 6 (sees 4, 5, 6), row 1's at 4 (sees 2, 3, 4): its padding's positions are never counted
    assert cache.inputs()["kv_window_start"].tolist() == [[4, 2], [0, 0], [3, 1]]
    cache.advance()
    assert cache.inputs()["kv_window_start"].tolist() == [[5, 3], [0, 0], [4, 2]]
    cache.move_row(1, 0)  # row 0 leaves, the last row moves into its place
    assert cache.inputs(1)["kv_window_start"].tolist() == [[3], [0], [2]]
    cache.clear_row(0)
    assert cache.inputs(1)["kv_window_start"].tolist() == [[0], [0], [0]]


def test_a_cache_with_sliding_layers_refuses_a_prefill_without_their_positions():
    with pytest.raises(ValueError, match="positions of their keys"):
        _cache(1).load(_presents([2, 2, 2], 1))
