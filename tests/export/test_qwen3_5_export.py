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


def test_its_prefills_run_at_the_one_length_each_was_traced_at(export):
    """A hybrid model's prefill graph is traced at one length (the unrolled gated delta rule): the static shapes list
    that length alone, on a GPU and on the CPU, and the runtime pads every prompt to it."""
    import torch

    from luvc.engines.static_shapes import StaticShapes
    from luvc.export.manifest import ExportManifest
    from luvc.runtime.sessions import RuntimeChoices, Sessions

    manifest = ExportManifest.load(export)
    sessions = Sessions(export, manifest, RuntimeChoices(device=torch.device("cuda", 0)))  # pads as on a GPU
    for step in (64, 1):
        shapes = StaticShapes.of(manifest, step)
        for name, graph in manifest.graphs.items():
            if graph.kind not in ("prefill", "text"):
                continue
            traced = graph.input("inputs_embeds").shape[1]
            assert isinstance(traced, int) and shapes[name].lengths == (traced,)
            assert traced in shapes["embed"].lengths
            assert {sessions.prefill_length(name, length) for length in (2, traced // 2, traced)} == {traced}
