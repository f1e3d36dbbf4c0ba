"""``GraphSpec``: one graph to export (module, example feeds, names, dynamic axes), and the specs of a model."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn
from torch.export import Dim

from luvc.export.bucket_plan import Bucket
from luvc.export.llm import DecodeGraph, EmbedGraph, PrefillGraph, deepstack_names, kept_index_layers
from luvc.export.manifest_entries import ProfileEntry, kv_names
from luvc.models.base import VLMAdapter

TEXT_PREFILL = "prefill_text"  # the graph of prompts without visuals
LADDER_SHORTEST = 64  # a hybrid model's shortest prefill rung: text tokens after the visuals (or of a text prompt)
LADDER_FACTOR = 4  # each rung of the ladder this many times the text of the one below
EXAMPLE_BATCH = 2  # traced with two rows: an example size of 1 would make torch.export specialise the batch axis


@dataclasses.dataclass
class GraphSpec:
    """One exportable graph. ``dims[input][axis]`` names a dynamic axis; everything else is static."""

    name: str
    kind: str  # vision | embed | prefill | decode
    module: nn.Module
    feeds: dict[str, torch.Tensor]
    output_names: list[str]
    dims: dict[str, dict[int, Dim]]
    bucket: str | None = None
    named_inputs: int | None = None  # ``forward``'s arguments before a variadic one (past KV, DeepStack planes)
    rung_of: str | None = None  # the longest graph of a prefill ladder this shorter one belongs to (``ladder_lengths``)

    def dynamic_shapes(self) -> tuple | None:
        """``torch.export`` form: one entry per ``forward`` argument (variadic past KV as a nested tuple)."""
        if not self.dims:
            return None
        shapes = [self.dims.get(name) for name in self.feeds]
        fixed = self.named_inputs
        if fixed is not None and len(shapes) > fixed:
            return (*shapes[:fixed], tuple(shapes[fixed:]))
        return tuple(shapes)

    def weight_bytes(self, below: int | None = None) -> int:
        """The bytes of the parameters and buffers ``module`` holds, each stored tensor once: at most what the graph
        keeps as weights; with ``below``, of those stored in fewer bytes than that."""
        storages = {
            tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes()
            for tensor in (*self.module.parameters(), *self.module.buffers())
        }
        return sum(size for size in storages.values() if below is None or size < below)

    def dim_names(self) -> dict[tuple[str, int], str]:
        return {(name, axis): dim.__name__ for name, axes in self.dims.items() for axis, dim in axes.items()}


def _rows(tensor: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """Repeat a one-row example to ``EXAMPLE_BATCH`` rows along ``axis``."""
    sizes = [1] * tensor.dim()
    sizes[axis] = EXAMPLE_BATCH
    return tensor.repeat(*sizes).contiguous()


def vision_spec(adapter: VLMAdapter, bucket: Bucket, profile: ProfileEntry) -> GraphSpec:
    module, feeds = adapter.vision_graph(bucket.pixels, bucket.plan)
    feeds = dict(feeds)
    feeds["pixel_values"] = feeds["pixel_values"].to(profile.dtype)
    dims = {}
    if feeds["pixel_values"].dim() == 4:  # (B, C, H, W): images (InternVL: each image's tiles) along axis 0
        feeds["pixel_values"] = _rows(feeds["pixel_values"])
        images = Dim("images", min=1, max=max(2, profile.max_batch))
        rows = adapter.pixel_rows_per_image(bucket.pixels)
        dims["pixel_values"] = {0: images if rows == 1 else rows * images}
    outputs = ["image_embeds", *deepstack_names(adapter.deepstack_planes)]
    return GraphSpec(f"vision_{bucket.name}", "vision", module, feeds, outputs, dims, bucket.name)


def _position_feed(positions: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Family position ids for a ``(R, S)`` example: ``(3, B, S)`` M-RoPE or ``(B, S)``; and the batch axis."""
    if positions.shape[0] == 1:
        return _rows(positions), 0
    return _rows(positions[:, None], axis=1), 1


def ladder_lengths(longest: int, shortest: int) -> list[int]:
    """The text lengths of a hybrid model's prefill ladder below ``longest`` (its longest graph's), from
    ``LADDER_SHORTEST`` up by ``LADDER_FACTOR``, none under ``shortest``: the chunked gated delta rule unrolls at one
    length, so a hybrid model's prefill is traced once per rung and a prompt runs the shortest rung it fits."""
    lengths, length = [], LADDER_SHORTEST
    while length < longest:
        if length >= shortest:
            lengths.append(length)
        length *= LADDER_FACTOR
    return lengths


def prefill_specs(adapter: VLMAdapter, bucket: Bucket, profile: ProfileEntry, shifts: bool = True) -> list[GraphSpec]:
    """The prefill graphs of ``bucket``: one of dynamic length, or a hybrid model's ladder (``ladder_lengths``), its
    longest graph first."""
    longest = prefill_spec(adapter, bucket, profile, shifts)
    if not adapter.linear_layers:
        return [longest]
    text = _longest_text(bucket, profile)
    rungs = [
        prefill_spec(adapter, bucket, profile, shifts, length)
        for length in ladder_lengths(text, bucket.min_text_tokens + 1)
    ]
    return [longest] + [_rung(spec, longest.name) for spec in rungs]


def _rung(spec: GraphSpec, longest: str) -> GraphSpec:
    """``spec``, traced at one length shorter than graph ``longest``'s, as a rung of its ladder ``{longest}_len{N}``."""
    length = spec.feeds["inputs_embeds"].shape[1]
    return dataclasses.replace(spec, name=f"{longest}_len{length}", rung_of=longest)


def _longest_text(bucket: Bucket, profile: ProfileEntry) -> int:
    """The most text tokens after ``bucket``'s visuals a prompt may have."""
    return max(profile.max_text_tokens, bucket.min_text_tokens + 1)


def prefill_spec(
    adapter: VLMAdapter,
    bucket: Bucket,
    profile: ProfileEntry,
    shifts: bool = True,
    text_tokens: int | None = None,
) -> GraphSpec:
    """The prefill graph of ``bucket``; ``shifts``: its visual spans move with each row's ``visual_shift`` (see
    ``PrefillGraph``). A hybrid model's is traced at one length: ``text_tokens`` after the visuals (default the
    longest)."""
    hidden = adapter.language_model.config.hidden_size
    prompt = bucket.visual_end
    text = bucket.min_text_tokens + 1
    if adapter.linear_layers:  # at one length: the chunked gated delta rule unrolls at it
        text = text_tokens or _longest_text(bucket, profile)
    positions = torch.cat(
        [
            bucket.prompt_position_ids,
            bucket.next_position + torch.arange(text).expand(bucket.prompt_position_ids.shape[0], -1),
        ],
        dim=1,
    )
    position_ids, batch_axis = _position_feed(positions)
    batch = Dim("batch", min=1, max=max(2, profile.max_batch))
    length = Dim(
        "sequence_length",
        min=prompt - bucket.visual_start + bucket.min_text_tokens,  # no text before the visuals
        max=prompt + _longest_text(bucket, profile),
    )
    feeds = {
        "inputs_embeds": torch.randn(EXAMPLE_BATCH, prompt + text, hidden, dtype=profile.dtype),
        "position_ids": position_ids,
        "prompt_lengths": torch.tensor([prompt + text, prompt + text - 1], dtype=torch.long),
    }
    if shifts:  # traced with one row as the template has it and one with a token more before its visuals
        feeds["visual_shift"] = torch.tensor([0, 1], dtype=torch.long)
    dims = {
        "inputs_embeds": {0: batch, 1: length},
        "position_ids": {batch_axis: batch, batch_axis + 1: length},
        "prompt_lengths": {0: batch},
        **({"visual_shift": {0: batch}} if shifts else {}),
    }
    if adapter.linear_layers:
        _fix_length(dims)
    for name in deepstack_names(adapter.deepstack_planes):  # one row per visual token of the image
        feeds[name] = torch.randn(EXAMPLE_BATCH, bucket.tokens_per_image, hidden, dtype=profile.dtype)
        dims[name] = {0: batch}
    plan = bucket.budget_plan
    outputs = [
        "logits",
        *kv_names("present", adapter.num_layers, adapter.linear_layers),
        *(f"kept_visual_indices.{layer}" for layer in kept_index_layers(plan)),
    ]
    module = PrefillGraph(adapter, bucket.visual_spans, plan, bucket.plan.vision.span_grids, shifts)
    return GraphSpec(f"prefill_{bucket.name}", "prefill", module, feeds, outputs, dims, bucket.name, named_inputs=3)


def _fix_length(dims: dict[str, dict[int, Dim]]) -> None:
    """Make a prefill graph's sequence axis static (a hybrid model's: traced at one length, rows padded to it)."""
    for axes in dims.values():
        for axis in [axis for axis, dim in axes.items() if dim.__name__ == "sequence_length"]:
            del axes[axis]


def text_prefill_specs(adapter: VLMAdapter, profile: ProfileEntry, longest: int) -> list[GraphSpec]:
    """The prefill graphs of prompts without visuals: one of dynamic length, or a hybrid model's ladder
    (``ladder_lengths``), its longest graph first."""
    graph = text_prefill_spec(adapter, profile, longest)
    if not adapter.linear_layers:
        return [graph]
    traced = graph.feeds["inputs_embeds"].shape[1]  # the longest graph's one length
    rungs = [text_prefill_spec(adapter, profile, length) for length in ladder_lengths(traced, 2)]
    return [graph] + [_rung(spec, graph.name) for spec in rungs]


def text_prefill_spec(adapter: VLMAdapter, profile: ProfileEntry, longest: int) -> GraphSpec:
    """The prefill of a prompt without visuals (a text-only turn): ``2 .. longest`` tokens (a shorter prompt is
    padded on the right), no SPU; a hybrid model's at ``longest`` only."""
    hidden = adapter.language_model.config.hidden_size
    batch = Dim("batch", min=1, max=max(2, profile.max_batch))
    length = Dim("sequence_length", min=2, max=max(longest, 4))
    example = min(max(longest, 4) - 1, 7)  # neither a bound nor the batch: nothing is specialised
    if adapter.linear_layers:  # at one length, ``longest``: the chunked gated delta rule unrolls at it
        example = max(longest, 4)
    position_ids, batch_axis = _position_feed(torch.arange(example).expand(adapter.position_rows, -1))
    feeds = {
        "inputs_embeds": torch.randn(EXAMPLE_BATCH, example, hidden, dtype=profile.dtype),
        "position_ids": position_ids,
        "prompt_lengths": torch.tensor([example, example - 1], dtype=torch.long),
    }
    dims = {
        "inputs_embeds": {0: batch, 1: length},
        "position_ids": {batch_axis: batch, batch_axis + 1: length},
        "prompt_lengths": {0: batch},
    }
    if adapter.linear_layers:
        _fix_length(dims)
    outputs = ["logits", *kv_names("present", adapter.num_layers, adapter.linear_layers)]
    module = PrefillGraph(adapter, (), None, shifts=False)
    return GraphSpec(TEXT_PREFILL, "text", module, feeds, outputs, dims, named_inputs=3)


def decode_spec(adapter: VLMAdapter, profile: ProfileEntry, capacities: Sequence[int]) -> GraphSpec:
    """One decode step over caches of the fixed per-layer ``capacities`` (``kv_capacities``; a linear-attention
    layer's two states instead, of fixed sizes)."""
    config = adapter.language_model.config
    batch = Dim("batch", min=1, max=max(2, profile.max_batch))
    position_ids, batch_axis = _position_feed(torch.full((adapter.position_rows, 1), 40))
    feeds = {
        "inputs_embeds": torch.randn(EXAMPLE_BATCH, 1, config.hidden_size, dtype=profile.dtype),
        "position_ids": position_ids,
        "kv_write_index": torch.tensor([[capacity // 2, capacity // 3] for capacity in capacities], dtype=torch.long),
        # only its length is read; traced between the smallest capacity and the largest, not equal to either
        "attention_window": torch.zeros(_example_window(capacities), dtype=torch.bool),
    }
    window = Dim("attention_window", min=1, max=max(capacities))
    dims = {
        "inputs_embeds": {0: batch},
        "position_ids": {batch_axis: batch},
        "kv_write_index": {1: batch},
        "attention_window": {0: window},
    }
    if adapter.sliding_layers:  # each layer's first slot the step attends to (its values are not specialised)
        feeds["kv_window_start"] = torch.tensor([[1, 0]] * len(capacities), dtype=torch.long)
        dims["kv_window_start"] = {1: batch}
    linear = adapter.llm_spec().linear
    names = kv_names("past_key_values", adapter.num_layers, adapter.linear_layers)
    for layer, capacity in enumerate(capacities):
        pair: list[tuple[tuple[int, ...], torch.dtype]] = [
            ((config.num_key_value_heads, capacity, adapter.head_dim), profile.dtype)
        ] * 2
        if linear is not None and layer in linear.layers:  # its states: the convolution's and the recurrence's
            pair = [(linear.conv_state_shape, profile.dtype), (linear.recurrent_state_shape, torch.float32)]
        for name, (shape, dtype) in zip(names[2 * layer : 2 * layer + 2], pair):
            feeds[name] = torch.randn(EXAMPLE_BATCH, *shape, dtype=dtype)
            dims[name] = {0: batch}
    outputs = ["logits", *kv_names("present", adapter.num_layers, adapter.linear_layers)]
    return GraphSpec("decode", "decode", DecodeGraph(adapter), feeds, outputs, dims, named_inputs=4)


def _example_window(capacities: Sequence[int]) -> int:
    """A traced window length that equals no capacity and no other traced size (so nothing is specialised)."""
    length = max(capacities) // 2 + 3
    while length in capacities or length in (1, EXAMPLE_BATCH):
        length += 1
    return length


def embed_spec(adapter: VLMAdapter, profile: ProfileEntry) -> GraphSpec:
    batch = Dim("batch", min=1, max=max(2, profile.max_batch))
    length = Dim("sequence_length", min=1, max=1 << 16)
    feeds = {"input_ids": torch.zeros(EXAMPLE_BATCH, 8, dtype=torch.long)}
    return GraphSpec(
        "embed", "embed", EmbedGraph(adapter), feeds, ["inputs_embeds"], {"input_ids": {0: batch, 1: length}}
    )
