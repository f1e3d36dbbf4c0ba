"""Graph specs: the example feeds and dynamic axes each graph is traced with, from the bucket's facts."""

import torch
from torch.export import Dim

from luvc.export.bucket_plan import plan_bucket
from luvc.export.graphs import EXAMPLE_BATCH, GraphSpec, decode_spec, embed_spec, prefill_spec, vision_spec
from luvc.export.profile import ExportProfile
from luvc.models import load_model


def _adapter(family: str):
    adapter = load_model(family)
    adapter.apply_luvc()
    return adapter


def test_prefill_spec_feeds_the_bucket_prompt_and_bounds_the_text_by_the_profile():
    adapter = _adapter("tiny-qwen2-vl")
    bucket = plan_bucket(adapter, (224, 224))
    profile = ExportProfile(max_batch=3, max_text_tokens=40).resolve(adapter)
    spec = prefill_spec(adapter, bucket, profile)
    hidden = adapter.language_model.config.hidden_size
    length = bucket.visual_end + bucket.min_text_tokens + 1
    assert spec.name == "prefill_224x224" and spec.kind == "prefill"
    assert tuple(spec.feeds["inputs_embeds"].shape) == (EXAMPLE_BATCH, length, hidden)
    assert tuple(spec.feeds["position_ids"].shape) == (3, EXAMPLE_BATCH, length)  # M-RoPE: three rows
    batch, sequence = spec.dims["inputs_embeds"][0], spec.dims["inputs_embeds"][1]
    assert (batch.min, batch.max) == (1, 3)
    # from no text before the visual tokens (their span and the shortest text after) to the template's prefix + 40
    tokens = sum(count for _, count in bucket.visual_spans)
    assert bucket.visual_start > 0 and tokens == bucket.visual_end - bucket.visual_start
    assert (sequence.min, sequence.max) == (tokens + bucket.min_text_tokens, bucket.visual_end + 40)
    assert spec.dims["position_ids"] == {1: batch, 2: sequence}
    # each row's length and visual shift, both per row (batch axis only)
    assert spec.dims["prompt_lengths"] == {0: batch} and spec.dims["visual_shift"] == {0: batch}
    assert spec.feeds["prompt_lengths"].tolist() == [length, length - 1]
    # embeds, positions, lengths, then the variadic shift (and DeepStack planes, none in Qwen2-VL)
    assert spec.dynamic_shapes()[3] == ({0: batch},)
    layers = adapter.num_layers
    kept = [
        f"kept_visual_indices.{layer}" for layer in bucket.budget_plan.prune_layers() if bucket.budget_plan.total[layer]
    ]
    assert spec.output_names == [
        "logits",
        *(f"present.{i // 2}.{('key', 'value')[i % 2]}" for i in range(2 * layers)),
        *kept,
    ]
    # the prompt's positions up to the text are the bucket's, then the text continues from next_position
    positions = spec.feeds["position_ids"][:, 0]
    assert torch.equal(positions[:, : bucket.visual_end], bucket.prompt_position_ids)
    assert positions[0, bucket.visual_end].item() == bucket.next_position


def test_decode_spec_takes_each_layers_cache_at_its_capacity():
    adapter = _adapter("tiny-llava")
    capacities = [300, 200, 120, 90]
    spec = decode_spec(adapter, ExportProfile().resolve(adapter), capacities)
    config = adapter.language_model.config
    for layer, capacity in enumerate(capacities):
        for kind in ("key", "value"):
            shape = (EXAMPLE_BATCH, config.num_key_value_heads, capacity, adapter.head_dim)
            assert tuple(spec.feeds[f"past_key_values.{layer}.{kind}"].shape) == shape
    # one write index per layer and row: (layers, batch)
    assert spec.feeds["kv_write_index"].tolist() == [[150, 100], [100, 66], [60, 40], [45, 30]]
    shapes = spec.dynamic_shapes()  # embeds, positions, write index, window, then the past KV as one variadic argument
    assert len(shapes) == 5 and len(shapes[4]) == 2 * len(capacities)
    assert shapes[2] == {1: shapes[0][0]}  # the write index's row axis is the batch
    assert shapes[3][0].min == 1 and shapes[3][0].max == 300  # the attention window: up to the largest capacity
    assert spec.feeds["attention_window"].shape[0] not in (*capacities, 1, EXAMPLE_BATCH)  # nothing specialised


def test_vision_and_embed_specs_batch_images_and_tokens():
    adapter = _adapter("tiny-llava")
    bucket = plan_bucket(adapter, (224, 224))
    vision = vision_spec(adapter, bucket, ExportProfile(max_batch=4).resolve(adapter))
    assert vision.feeds["pixel_values"].shape[0] == EXAMPLE_BATCH
    assert vision.dims["pixel_values"][0].max == 4
    embed = embed_spec(adapter, ExportProfile().resolve(adapter))
    assert list(embed.feeds) == ["input_ids"] and embed.dims["input_ids"][1].min == 1


def test_dynamic_shapes_follow_the_feeds_order():
    batch = Dim("batch", min=1, max=4)
    spec = GraphSpec(
        "g", "embed", torch.nn.Identity(), {"a": torch.zeros(1), "b": torch.zeros(1)}, [], {"b": {0: batch}}
    )
    assert spec.dynamic_shapes() == (None, {0: batch})
    assert spec.dim_names() == {("b", 0): "batch"}
    assert GraphSpec("g", "embed", torch.nn.Identity(), {"a": torch.zeros(1)}, [], {}).dynamic_shapes() is None
