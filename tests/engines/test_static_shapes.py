"""The shapes an export's graphs run at, listed from its manifest (``luvc.engines.static_shapes``), against the shapes a
real pipeline's replayed sessions capture through the session seam (ONNX Runtime's CPU EP doing the captures, the
prefill padded as on a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from luvc.cli.main import main
from luvc.cuda_graphs import MAX_BUFFER_BYTES, MAX_CAPTURED
from luvc.engines.static_shapes import PREFILL_LENGTH_STEP, WINDOW_STEP, StaticShapes
from luvc.export.manifest import ExportManifest
from luvc.images import synthetic_image
from luvc.runtime.pipeline import GenerationOptions
from tests.runtime.replaying import replaying_pipeline


def test_prefill_lengths_are_the_64_token_steps_up_to_the_longest_and_decode_windows_up_to_the_largest_cache(
    exports,
):
    manifest = ExportManifest.load(exports("tiny-qwen2-vl"))
    shapes = StaticShapes.of(manifest)
    max_batch = manifest.profile.max_batch
    for graph in shapes.replayed:
        assert graph.batch_sizes == tuple(range(1, max_batch + 1))
        *steps, longest = graph.lengths
        if graph.kind == "decode":
            assert longest == max(manifest.kv_cache.capacity)
            assert steps == list(range(WINDOW_STEP, longest, WINDOW_STEP))
        elif graph.kind in ("prefill", "text"):
            bucket = manifest.buckets.get(manifest.graphs[graph.graph].bucket or "")
            shortest = bucket.visual_end - bucket.visual_start + bucket.min_text_tokens if bucket else 2
            prompt = bucket.visual_end + manifest.profile.max_text_tokens if bucket else manifest.longest_text_prompt
            assert longest == prompt
            assert all(length % PREFILL_LENGTH_STEP == 0 for length in steps) and steps[0] >= shortest
            assert steps[-1] + PREFILL_LENGTH_STEP >= longest > steps[-1]
    vision = [graph for graph in shapes.graphs if graph.kind == "vision"]
    assert vision and all(graph.kind == "vision" and graph.count for graph in vision)
    assert not set(vision) & set(shapes.replayed)  # vision runs plain
    assert shapes.count == sum(graph.count for graph in shapes.replayed)


@pytest.mark.slow
def test_every_shape_a_replayed_pipeline_captures_is_planned_and_its_buffers_are_the_planned_bytes(exports):
    """Two requests (a short prompt alone, then two rows with a long one) captured through the replayer as on a GPU:
    each captured shape is one ``StaticShapes`` lists, and the replayer's own buffers are the bytes it counts for
    those shapes (the KV caches bound in place excluded)."""
    folder = exports("tiny-qwen2-vl")
    pipeline = replaying_pipeline(folder)  # as on a GPU
    image = synthetic_image(224, 224, 4)
    options = GenerationOptions(70, stop_token_ids=())  # past one attention window of 64
    pipeline.generate(image, "Hi.", options)
    pipeline.generate([image, image], ["Hi.", "Describe " * 40], options)
    shapes = StaticShapes.of(pipeline.manifest)
    captured = 0
    for name, session in pipeline.sessions.opened().items():
        if session.replayer is None:
            assert pipeline.manifest.graphs[name].kind == "vision"
            continue
        planned = shapes[name].bindings()
        for entry in session.replayer.captured.values():
            binding = _binding(pipeline.manifest.graphs[name].kind, entry.inputs)
            assert binding in planned, f"{name} captured {binding}, which the plan does not list"
            assert entry.buffer_bytes == shapes.buffer_bytes(name, binding)
            captured += 1
    assert captured >= 8  # embed, prefill and decode at two batch sizes, decode at two windows


def _binding(kind: str, inputs: dict[str, torch.Tensor]) -> dict[str, int]:
    """The symbolic dimensions of a captured call, read from its input tensors."""
    first = inputs["input_ids"] if kind == "embed" else inputs["inputs_embeds"]
    binding = {"batch": first.shape[0], "images": first.shape[0]}
    if kind == "decode":
        binding["attention_window"] = inputs["attention_window"].shape[0]
    else:
        binding["sequence_length"] = first.shape[1]
    return binding


def test_plan_counts_every_planned_shapes_buffers_within_the_replayers_limits(exports, capsys):
    export = exports("tiny-qwen2-vl")
    assert main(["plan", str(export), "--target", "80", "--cuda-graphs", "on"]) == 0
    out = capsys.readouterr().out
    shapes = StaticShapes.of(ExportManifest.load(export))
    assert f"CUDA graphs: {shapes.count} shapes" in out
    largest = max(
        shapes.buffer_bytes(graph.graph, binding) for graph in shapes.replayed for binding in graph.bindings()
    )
    replay = shapes.replay_buffer_bytes(MAX_BUFFER_BYTES, MAX_CAPTURED)
    assert largest < replay <= len(shapes.replayed) * MAX_BUFFER_BYTES
    assert shapes.replay_buffer_bytes(1000, MAX_CAPTURED) == 1000 * len(shapes.replayed)  # each graph's at its limit


def test_inspect_lists_the_shapes_of_each_replayed_graph(exports, capsys):
    export = exports("tiny-qwen2-vl")
    assert main(["inspect", str(export)]) == 0
    out = capsys.readouterr().out
    shapes = StaticShapes.of(ExportManifest.load(export))
    assert f"{shapes.count} shapes" in out
    decode = shapes["decode"]
    assert f"decode: batch 1-{decode.batch_sizes[-1]} x windows 64, 128 .. {decode.lengths[-1]}" in out
    assert np.all(np.diff(decode.lengths) > 0)
