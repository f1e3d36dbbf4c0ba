"""The language-model graph modules in PyTorch, before any export: cached attention, the in-place decode step
against the prefill, and which layers output kept indices."""

import pytest
import torch

from luvc.compress.budgets import plan_budgets
from luvc.compress.config import LUVCConfig
from luvc.export.bucket_plan import plan_bucket
from luvc.export.llm import DecodeGraph, InPlaceGraphCache, PrefillGraph, cached_attention, kept_index_layers
from luvc.models import load_model


def test_cached_attention_equals_attention_over_repeated_kv_heads():
    torch.manual_seed(0)
    batch, heads, kv_heads, capacity, dim = 2, 6, 2, 7, 8
    query = torch.randn(batch, heads, 1, dim)
    key, value = torch.randn(batch, kv_heads, capacity, dim), torch.randn(batch, kv_heads, capacity, dim)
    valid = 5  # positions 0..4 hold tokens; the rest of the capacity is masked
    mask = torch.zeros(batch, 1, 1, capacity)
    mask[..., valid:] = torch.finfo(torch.float32).min
    output, _ = cached_attention(None, query, key, value, mask)
    groups = heads // kv_heads
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key[:, :, :valid].repeat_interleave(groups, 1), value[:, :, :valid].repeat_interleave(groups, 1)
    )
    torch.testing.assert_close(output, expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window, length", [(5, 5), (6, 6), (64, 6)])  # the window, capped at the capacity (6)
def test_the_decode_mask_opens_the_cached_tokens_and_the_one_written(window, length):
    past = [(torch.zeros(1, 1, 6, 2), torch.zeros(1, 1, 6, 2))]
    cache = InPlaceGraphCache(past, torch.tensor([[3]]), torch.zeros(window, dtype=torch.bool))  # (layers, rows)
    mask = cache.attention_mask(0, torch.zeros(1, 1, 2))
    assert mask.shape == (1, 1, 1, length)
    assert (mask[0, 0, 0, :4] == 0).all() and (mask[0, 0, 0, 4:] < -1e30).all()


def test_kept_indices_are_output_for_pruning_layers_that_keep_tokens():
    plan = plan_budgets(4, [16], LUVCConfig(budgets=(16, 8, 8, 0)).resolve(2, 4))
    assert plan.prune_layers() == (1, 3)
    assert kept_index_layers(plan) == [1]  # layer 3 keeps none: no empty output


@pytest.mark.parametrize("window", [0, 1, 64])  # tokens beyond the longest layer's valid prefix
@pytest.mark.parametrize("family", ["tiny-llava", "tiny-qwen2-vl"])
@torch.no_grad()
def test_a_decode_step_over_the_fixed_capacity_cache_equals_the_prefill_of_one_more_token(family, window):
    adapter = load_model(family)
    adapter.apply_luvc()
    bucket = plan_bucket(adapter, (224, 224))
    hidden = adapter.language_model.config.hidden_size
    length = bucket.visual_end + bucket.min_text_tokens + 2
    torch.manual_seed(1)
    embeds = torch.randn(1, length + 1, hidden)
    rows = bucket.prompt_position_ids.shape[0]
    text = bucket.next_position + torch.arange(length + 1 - bucket.visual_end).expand(rows, -1)
    positions = torch.cat([bucket.prompt_position_ids, text], dim=1)[:, None]  # (R, 1, S): M-RoPE rows or one
    positions = positions if rows == 3 else positions[0]
    prefill = PrefillGraph(adapter, bucket.visual_spans, bucket.budget_plan)
    lengths, shift = torch.tensor([length + 1]), torch.tensor([0])
    longer = prefill(embeds, positions, lengths, shift)[0]  # the last token's logits with it in the prompt
    prompt = prefill(embeds[:, :length], positions[..., :length], lengths - 1, shift)
    logits, *present = prompt[: 1 + 2 * adapter.num_layers]
    past, write_index = [], []
    for layer_present in present:  # each layer's cache at a capacity with room to spare, zeros after the tokens
        cache = torch.zeros(*layer_present.shape[:2], layer_present.shape[2] + 3, layer_present.shape[3])
        cache[:, :, : layer_present.shape[2]] = layer_present
        past.append(cache)
    write_index = torch.tensor([[tensor.shape[2]] for tensor in present[0::2]])  # (layers, rows)
    attention_window = torch.zeros(int(write_index.max()) + 1 + window, dtype=torch.bool)
    step = DecodeGraph(adapter)(embeds[:, length:], positions[..., length:], write_index, attention_window, *past)
    torch.testing.assert_close(step[0], longer, atol=1e-4, rtol=1e-4)
    # the step wrote its key at each layer's write index, in place of the zeros there
    written = zip(step[1::2], write_index[:, 0].tolist())
    assert all(bool(cache[:, :, index].abs().sum() > 0) for cache, index in written)
