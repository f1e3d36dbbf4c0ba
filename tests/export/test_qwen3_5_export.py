"""Qwen3.5 exported: the hybrid language model's graphs run, with each linear-attention layer's states carried from the
prefill into decode, through ONNX Runtime and OpenVINO, in every calibrated precision and TensorRT-RTX's builder.

Its own module, apart from the all-family tests (``tests.conftest.OWN_EXPORT_MODULES``): transformers' reference
kernels for its linear attention make each PyTorch reference run slow on the CPU."""

import pytest

from tests.export.own_family import (
    PRECISIONS,
    built_engines,
    check_openvino_parity,
    check_rows_of_different_lengths,
    parity_of,
)

FAMILY = "tiny-qwen3.5"


@pytest.fixture(scope="module")
def export(exports):
    return exports(FAMILY)


def test_rows_of_different_lengths_generate_what_pytorch_luvc_generates_for_each(export):
    # the shorter row is padded on the right: its states must end at its own last token, not at the padding
    check_rows_of_different_lengths(FAMILY, export)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_parity_passes_with_the_states_compared(precision, export, tmp_path):
    results = parity_of(export, precision, tmp_path)
    ort = results.backends[0]
    assert {"prefill.present.*.conv", "prefill.present.*.recurrent"} <= {check.name for check in ort.checks}
    if precision == "fp32":  # localised: the attention layer (a linear-attention layer's rows are turned in the graph)
        assert [error.name for error in ort.layer_errors if error.name.startswith("llm.")] == ["llm.layers.3"]
        assert ort.first_diverging_layer(results.tolerances) is None


def test_openvino_passes_parity(export):
    check_openvino_parity(export)


def test_tensorrt_rtx_builds_every_graph(export, tmp_path):
    assert {"prefill_224x224", "decode", "prefill_text"} <= built_engines(export, tmp_path)


def test_its_prefills_form_a_ladder_of_traced_lengths_and_a_prompt_runs_the_shortest_that_holds_it(export):
    """A hybrid model's prefill is traced at fixed lengths (the unrolled gated delta rule): each prefill graph with
    rungs of 64 and 256 text tokens below its longest. The static shapes list each rung's length alone, on a GPU and
    on the CPU, and a prompt runs the shortest rung that holds it."""
    import torch

    from luvc.engines.static_shapes import StaticShapes, ladder
    from luvc.export.manifest import ExportManifest
    from luvc.runtime.sessions import RuntimeChoices, Sessions

    manifest = ExportManifest.load(export)
    bucket = manifest.buckets["224x224"]
    prefill_rungs = [length for length, _ in ladder(manifest, bucket.prefill)]
    visual_end = bucket.visual_start + bucket.tokens_per_image
    longest_text = manifest.profile.max_text_tokens
    assert prefill_rungs == [visual_end + 64, visual_end + 256, visual_end + longest_text]
    text_rungs = [length for length, _ in ladder(manifest, manifest.text_prefill)]
    assert text_rungs[:2] == [64, 256] and len(text_rungs) == 3 and text_rungs[2] > 256
    assert [name for _, name in ladder(manifest, bucket.prefill)][-1] == bucket.prefill
    gpu = Sessions(export, manifest, RuntimeChoices(device=torch.device("cuda", 0)))  # pads as on a GPU
    cpu = Sessions(export, manifest, RuntimeChoices())
    for step in (64, 1):
        shapes = StaticShapes.of(manifest, step)
        for name, graph in manifest.graphs.items():
            if graph.kind in ("prefill", "text"):
                traced = graph.input("inputs_embeds").shape[1]
                assert isinstance(traced, int) and shapes[name].lengths == (traced,)
                assert traced in shapes["embed"].lengths
    for sessions in (gpu, cpu):
        for rungs, graph in ((prefill_rungs, bucket.prefill), (text_rungs, manifest.text_prefill)):
            chosen = [sessions.prefill_shape(graph, length)[1] for length in (2, rungs[0], rungs[0] + 1, rungs[-1])]
            assert chosen == [rungs[0], rungs[0], rungs[1], rungs[-1]]


@pytest.mark.parametrize("visual", [True, False])
def test_a_short_prompt_on_the_shortest_rung_computes_what_the_longest_graph_computes(visual, export):
    """The rungs are one prefill traced at other lengths: a short prompt's logits and states from the shortest rung
    equal those of the longest graph, fed the same prompt padded further."""
    import numpy as np

    from luvc.engines.static_shapes import ladder
    from luvc.images import synthetic_image
    from luvc.runtime.options import GenerationOptions
    from luvc.runtime.pipeline import Pipeline
    from luvc.runtime.prefill import feeds_at
    from luvc.runtime.sessions import host_arrays

    pipeline = Pipeline(export)
    prepared = pipeline.prepare([synthetic_image(224, 224, 3)] if visual else None, ["Describe the picture."])
    request = pipeline.request(prepared, GenerationOptions(1))
    request.step()
    rungs = ladder(pipeline.manifest, pipeline.manifest.buckets["224x224"].prefill if visual else "prefill_text")
    assert request.prefill_graph == rungs[0][1]
    longest, graph = rungs[-1]
    padded = feeds_at(pipeline.feeds, prepared, request.image_features, longest)
    expected = host_arrays(pipeline.sessions[graph].infer(padded))
    got = host_arrays(request.prefill_outputs)
    padding = rungs[0][0] - int(prepared.prompts.lengths[0])  # on the shortest rung; the longest pads more
    for name, value in got.items():
        reference = expected[name]
        if name.endswith((".key", ".value")):  # the prompt's kept positions, the padding after them
            kept = value.shape[2] - padding
            value, reference = value[:, :, :kept], reference[:, :, :kept]
        np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_request_loads_every_rung_on_onnx_runtime_and_the_shortest_on_openvino(export):
    """ONNX Runtime holds the weights once for every rung: a request loads them all. OpenVINO holds them once per
    compiled graph: a request loads the shortest rung, which most prompts run (a longer one compiles when needed)."""
    from luvc.engines.static_shapes import ladder
    from luvc.runtime.pipeline import Pipeline

    ort = Pipeline(export)
    bucket = ort.manifest.buckets["224x224"]
    rungs = [name for _, name in ladder(ort.manifest, bucket.prefill)]
    text_rungs = [name for _, name in ladder(ort.manifest, ort.manifest.text_prefill)]
    assert set(rungs) <= set(ort.request_graphs(bucket))
    assert set(rungs + text_rungs) <= set(ort.request_graphs())
    openvino = Pipeline(export, backend="openvino")
    graphs = openvino.request_graphs(bucket)
    assert rungs[0] in graphs and not set(rungs[1:]) & set(graphs)
    assert text_rungs[0] in openvino.request_graphs(text_only=True)
