"""The checks a family's own export module makes (``tests.conftest.OWN_EXPORT_MODULES``: test_qwen3_5_export.py,
test_gemma3_export.py), each once per family."""

import numpy as np
import pytest
import torch

from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.generation import greedy_generate
from luvc.parity import check_parity
from luvc.parity.results import ParityResults
from luvc.runtime.pipeline import Pipeline
from luvc.samples import synthetic_samples

PROMPTS = ["Describe the picture.", "What is in this picture? Answer in a few words, and say where it is, please."]
PRECISIONS = ["fp32", "int8", "int8w", "int4"]


def check_rows_of_different_lengths(family: str, export) -> None:
    """Two rows whose text differs in length run as one batch (the shorter padded on the right) and each generates
    what PyTorch LUVC generates for it alone, from the same prompt ids."""
    adapter = load_model(family)
    adapter.apply_luvc()
    images = [synthetic_image(224, 224, seed) for seed in (7, 8)]
    pipeline = Pipeline(export)
    prepared = pipeline.prepare(images, PROMPTS)
    assert prepared.prompts.lengths[0] < prepared.prompts.lengths[1]
    tokens, _, _ = pipeline.greedy(prepared, 8)
    for row, (image, prompt) in enumerate(zip(images, PROMPTS)):
        inputs = adapter.prepare_inputs([image], prompt)
        length = int(prepared.prompts.lengths[row])
        assert prepared.prompts.input_ids[row, :length].tolist() == inputs["input_ids"][0].tolist()
        with torch.no_grad():
            expected = greedy_generate(adapter.model, inputs, 8, eos_token_id=adapter.stop_token_ids)
        np.testing.assert_array_equal(tokens[row][: expected.shape[1]], expected[0].numpy())


def parity_of(export, precision: str, tmp_path) -> ParityResults:
    """Parity of ``export`` calibrated to ``precision`` (``fp32``: as exported) on two synthetic images, checked to
    pass."""
    from luvc.calibration import calibrate_export

    folder = export
    if precision != "fp32":
        folder = calibrate_export(export, tmp_path / precision, precision=precision, show_progress=False)
    results = check_parity(folder, samples=synthetic_samples([(224, 224)], count=2), show_progress=False)
    assert results, str(results)
    return results


def check_openvino_parity(export) -> None:
    """Parity passes on ONNX Runtime and on OpenVINO (f32)."""
    samples = synthetic_samples([(224, 224)], count=1)
    results = check_parity(export, samples=samples, openvino=True, openvino_precision="f32", show_progress=False)
    assert [backend.backend for backend in results.backends] == ["ort", "openvino"]
    assert results, str(results)


def built_engines(export, tmp_path) -> set[str]:
    """The graphs TensorRT-RTX's builder made engines of (skips without ``tensorrt_rtx``)."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")
    from luvc.engines.builder import build_engines
    from luvc.engines.manifest import EngineManifest

    return set(EngineManifest.load(build_engines(export, "ada", tmp_path / "engines", show_progress=False)).engines)
