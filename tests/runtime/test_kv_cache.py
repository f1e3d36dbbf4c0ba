"""The fixed-capacity KV cache: one buffer per layer and kind, bound as the decode graph's past and present."""

import numpy as np
import pytest
import torch

from luvc.errors import LuvcError
from luvc.runtime.kv_cache import KVCache, KVLayout


def _presents(lengths):
    return {
        f"present.{layer}.{kind}": torch.full((1, 2, length, 4), float(layer + 1))
        for layer, length in enumerate(lengths)
        for kind in ("key", "value")
    }


def test_prefill_fills_each_prefix_and_one_buffer_serves_as_past_and_present():
    cache = KVCache(1, KVLayout(2, 4, (6, 3)))
    addresses = [t.data_ptr() for pair in cache.buffers for t in pair]
    cache.load(_presents([4, 1]))
    assert cache.lengths == [4, 1] and cache.write_index.tolist() == [[4], [1]]  # (layers, rows)
    key, _ = cache.valid(0)
    assert key.shape == (1, 2, 4, 4) and bool((key == 1).all())
    assert float(cache.buffers[0][0][:, :, 4:].abs().sum()) == 0  # past the prompt: untouched
    inputs, targets = cache.inputs(), cache.targets()
    for layer in range(2):
        for kind in ("key", "value"):
            past, present = inputs[f"past_key_values.{layer}.{kind}"], targets[f"present.{layer}.{kind}"]
            assert past.data_ptr() == present.data_ptr() and past.shape == present.shape  # one buffer, in place
    cache.advance()
    cache.advance()
    assert cache.lengths == [6, 3] and cache.write_index.tolist() == [[6], [3]]
    assert [t.data_ptr() for pair in cache.buffers for t in pair] == addresses
    assert cache.nbytes() == 2 * (6 + 3) * 2 * 4 * 4 and cache.capacity_bytes() == cache.nbytes()


def test_rows_padded_on_the_right_write_after_their_own_prompt():
    # a batch of prompts of 7 and 5 tokens (the second padded by 2): the prefill's present holds 7 per row; the
    # second row's steps overwrite its padding, and its bytes count its own tokens only
    cache = KVCache(2, KVLayout(2, 4, (10, 6)))
    presents = {
        f"present.{layer}.{kind}": torch.ones(2, 2, length, 4)
        for layer, length in enumerate([7, 4])
        for kind in ("key", "value")
    }
    cache.load(presents, prompt_lengths=np.array([7, 5]))
    assert cache.lengths == [7, 4] and cache.write_index.tolist() == [[7, 5], [4, 2]]
    assert cache.nbytes() == 2 * 2 * 4 * 4 * (7 + 5 + 4 + 2)  # key and value, 2 heads of 4 float32, per token
    cache.advance()
    assert cache.write_index.tolist() == [[8, 6], [5, 3]] and cache.lengths == [8, 5]


def test_the_attention_window_follows_the_longest_layer_in_steps_of_64_up_to_the_capacity():
    cache = KVCache(1, KVLayout(2, 4, (200, 100)))
    cache.load(_presents([70, 10]))
    window = cache.inputs()["attention_window"]
    assert window.shape == (128,)  # 71 tokens after the step's write, in a step of 64
    base = window.data_ptr()
    for _ in range(57):  # layer 0 then holds 127 tokens: the step writes the 128th
        cache.advance()
    assert cache.inputs()["attention_window"].shape == (128,)
    cache.advance()
    assert cache.inputs()["attention_window"].shape == (192,)
    for _ in range(64):
        cache.advance()
    assert cache.inputs()["attention_window"].shape == (200,)  # at most the largest capacity
    assert cache.inputs()["attention_window"].data_ptr() == base  # views of one tensor: nothing allocated


def test_a_full_layer_refuses_another_token_and_a_long_prompt_is_refused():
    cache = KVCache(1, KVLayout(2, 4, (6, 2)))
    cache.load(_presents([4, 1]))
    cache.check_room()
    cache.advance()
    with pytest.raises(LuvcError, match=r"KV cache of layer 1 is full \(2 tokens\).*--max-new-tokens"):
        cache.check_room()
    with pytest.raises(LuvcError, match="Layer 0's prompt holds 7 tokens, more than its KV capacity 6"):
        cache.load(_presents([7, 1]))


def test_unaliased_cache_alternates_between_two_sets():
    cache = KVCache(1, KVLayout(2, 4, (5, 3)), aliased=False)
    cache.load(_presents([2, 1]))
    past, present = cache.inputs()["past_key_values.0.key"], cache.targets()["present.0.key"]
    assert past.data_ptr() != present.data_ptr()
    present[:, :, :2] = past[:, :, :2]  # what the graph does: copy the cache and write the step's token
    present[:, :, 2] = 1
    cache.advance()
    assert cache.inputs()["past_key_values.0.key"].data_ptr() == present.data_ptr()  # the sets swapped roles
    assert cache.targets()["present.0.key"].data_ptr() == past.data_ptr()
    key, _ = cache.valid(0)
    assert key.shape[2] == 3 and bool((key == 1).all()) and float(past.abs().sum()) == 2 * 2 * 4
    assert cache.capacity_bytes() == 2 * 2 * (5 + 3) * 2 * 4 * 4


def test_rows_join_after_the_running_ones_and_the_last_row_moves_into_a_freed_one():
    # a running batch of 3 rows: row 0 holds prompt A, then rows 1-2 join with prompts B (5 tokens) and C (3 tokens,
    # padded); a step for the first 3 rows advances them only; row 0 leaves and row 2 (C) takes its place
    cache = KVCache(4, KVLayout(1, 2, (8, 8)))
    cache.load(
        {f"present.{layer}.{kind}": torch.full((1, 1, 4, 2), 1.0) for layer in range(2) for kind in ("key", "value")}
    )
    joined = {
        f"present.{layer}.{kind}": torch.stack([torch.full((1, 5, 2), 2.0), torch.full((1, 5, 2), 3.0)])
        for layer in range(2)
        for kind in ("key", "value")
    }
    cache.load(joined, np.array([5, 3]), first_row=1)
    assert cache.row_lengths[:, :4].tolist() == [[4, 5, 3, 0], [4, 5, 3, 0]]
    assert cache.write_index.tolist() == [[4, 5, 3, 0], [4, 5, 3, 0]]
    assert float(cache.buffers[0][0][0, 0, :4].sum()) == 8.0  # row 0 kept its keys
    inputs = cache.inputs(rows=3)
    assert inputs["past_key_values.0.key"].shape == (3, 1, 8, 2) and inputs["kv_write_index"].shape == (2, 3)
    assert len(inputs["attention_window"]) == 8  # the longest of the three rows plus one, rounded, at most 8
    cache.advance(rows=3)
    assert cache.row_lengths[0].tolist() == [5, 6, 4, 0]
    cache.move_row(2, 0)
    assert cache.row_lengths[0].tolist() == [4, 6, 0, 0] and cache.write_index[0].tolist() == [4, 6, 0, 0]
    assert bool((cache.buffers[1][1][0, 0, :3] == 3.0).all())  # C's values now in row 0
    with pytest.raises(LuvcError, match="rows 3..4 do not fit"):
        cache.load(joined, np.array([5, 3]), first_row=3)


HYBRID = KVLayout(2, 4, (6, 6), linear_layers=frozenset({0}), conv_state_shape=(5, 3), recurrent_state_shape=(2, 3, 4))


def _hybrid_presents(batch: int, length: int) -> dict[str, torch.Tensor]:
    """Layer 0 linear attention (its states, each row's value its row number + 1), layer 1 attention."""
    rows = torch.arange(1, batch + 1, dtype=torch.float32)
    return {
        "present.0.conv": rows.view(-1, 1, 1).expand(batch, 5, 3).clone(),
        "present.0.recurrent": rows.view(-1, 1, 1, 1).expand(batch, 2, 3, 4).clone(),
        "present.1.key": torch.ones(batch, 2, length, 4),
        "present.1.value": torch.ones(batch, 2, length, 4),
    }


def test_a_linear_attention_layers_states_load_alternate_and_move_with_their_row():
    cache = KVCache(2, HYBRID)
    cache.load(_hybrid_presents(2, 4), prompt_lengths=np.array([4, 3]))
    assert cache.lengths == [0, 4] and cache.row_lengths[1].tolist() == [4, 3]  # a state layer holds no tokens
    inputs, targets = cache.inputs(), cache.targets()
    assert "past_key_values.0.key" not in inputs and bool((inputs["past_key_values.0.conv"][1] == 2).all())
    # the step reads the states whole and gives new ones: never into what it reads; the keys stay in place
    assert targets["present.0.conv"].data_ptr() != inputs["past_key_values.0.conv"].data_ptr()
    assert targets["present.0.recurrent"].dtype == torch.float32
    assert targets["present.1.key"].data_ptr() == inputs["past_key_values.1.key"].data_ptr()
    targets["present.0.recurrent"][0].fill_(3.0)  # what the step gave each row
    targets["present.0.recurrent"][1].fill_(7.0)
    cache.advance()
    assert cache.inputs()["past_key_values.0.recurrent"].data_ptr() == targets["present.0.recurrent"].data_ptr()
    assert cache.lengths == [0, 5]
    cache.move_row(1, 0)
    assert cache.row_lengths[:, 0].tolist() == [0, 4] and bool((cache.buffers[0][1][0] == 7).all())
    state_bytes = 5 * 3 * 4 + 2 * 3 * 4 * 4  # per row: the conv state (float32 here) and the recurrent state
    assert cache.capacity_bytes() == 2 * 2 * state_bytes + 2 * 2 * 2 * 6 * 4 * 4  # states in two sets, keys in one
    for _ in range(2):
        cache.advance()
    with pytest.raises(LuvcError, match="layer 1 is full"):  # the attention layer fills; the state layer never does
        cache.check_room()
