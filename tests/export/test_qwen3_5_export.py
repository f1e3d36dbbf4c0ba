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
