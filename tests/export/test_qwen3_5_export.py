"""Qwen3.5 exported: the hybrid language model's graphs run, with each linear-attention layer's states carried from the
prefill into decode, through ONNX Runtime and OpenVINO, in every calibrated precision and TensorRT-RTX's builder.

Its own module, apart from the all-family tests (``tests.conftest.EXPORT_MATRIX``): transformers' reference kernels
for its linear attention make each PyTorch reference run slow on the CPU."""

import numpy as np
import pytest
import torch

from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.generation import greedy_generate
from luvc.parity import check_parity
from luvc.runtime.pipeline import Pipeline
from luvc.samples import synthetic_samples

FAMILY = "tiny-qwen3.5"
PROMPTS = ["Describe the picture.", "What is in this picture? Answer in a few words, and say where it is, please."]


@pytest.fixture(scope="module")
def export(exports):
    return exports(FAMILY)


def test_rows_of_different_lengths_generate_what_pytorch_luvc_generates_for_each(export):
    # the shorter row is padded on the right: its states must end at its own last token, not at the padding
    adapter = load_model(FAMILY)
    adapter.apply_luvc()
    images = [synthetic_image(224, 224, seed) for seed in (7, 8)]
    pipeline = Pipeline(export)
    prepared = pipeline.prepare(images, PROMPTS)
    assert prepared.prompts.lengths[0] < prepared.prompts.lengths[1]
    tokens, _, _ = pipeline.greedy(prepared, 8)
    eos = adapter.tokenizer.eos_token_id
    for row, (image, prompt) in enumerate(zip(images, PROMPTS)):
        with torch.no_grad():
            expected = greedy_generate(adapter.model, adapter.prepare_inputs([image], prompt), 8, eos_token_id=eos)
        np.testing.assert_array_equal(tokens[row], expected[0].numpy())


@pytest.mark.parametrize("precision", ["fp32", "int8", "int8w", "int4"])
def test_parity_passes_with_the_states_compared(precision, export, tmp_path):
    from luvc.calibration import calibrate_export

    folder = export
    if precision != "fp32":
        folder = calibrate_export(export, tmp_path / precision, precision=precision, show_progress=False)
    results = check_parity(folder, samples=synthetic_samples([(224, 224)], count=2), show_progress=False)
    assert results, str(results)
    ort = results.backends[0]
    assert {"prefill.present.*.conv", "prefill.present.*.recurrent"} <= {check.name for check in ort.checks}
    if precision == "fp32":  # localised: the attention layer (a linear-attention layer's rows are turned in the graph)
        assert [error.name for error in ort.layer_errors if error.name.startswith("llm.")] == ["llm.layers.3"]
        assert ort.first_diverging_layer(results.tolerances) is None


def test_openvino_passes_parity(export):
    samples = synthetic_samples([(224, 224)], count=1)
    results = check_parity(export, samples=samples, openvino=True, openvino_precision="f32", show_progress=False)
    assert [backend.backend for backend in results.backends] == ["ort", "openvino"]
    assert results, str(results)


def test_tensorrt_rtx_builds_every_graph(export, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")
    from luvc.engines.builder import build_engines
    from luvc.engines.manifest import EngineManifest

    engines = EngineManifest.load(build_engines(export, "ada", tmp_path / "engines", show_progress=False))
    assert {"prefill_224x224", "decode", "prefill_text"} <= set(engines.engines)
