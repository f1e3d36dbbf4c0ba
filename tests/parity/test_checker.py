"""Parity of real exports against PyTorch LUVC on ONNX Runtime CPU: pass, fail and localise, precision bounds."""

import pytest

from luvc.parity import TOLERANCES, check_parity
from luvc.parity.results import LEVELS
from luvc.parity.tolerances import backend_tolerances
from tests.conftest import EXPORT_MATRIX, perturb_weight

FAMILIES = EXPORT_MATRIX


@pytest.mark.parametrize("family", FAMILIES)
def test_correct_fp32_export_passes_every_level(family, parity_of):
    results = parity_of(family)
    assert results, str(results)
    assert results.tolerances == TOLERANCES["fp32"]
    ort, openvino = results.backends
    assert openvino.backend == "openvino" and not openvino.failures(results.bounds(openvino))
    # OpenVINO's bf16 products are judged with bf16's bounds too, and only they
    assert results.bounds(openvino) == backend_tolerances(TOLERANCES["fp32"], openvino.compute)
    assert results.bounds(ort) == TOLERANCES["fp32"]
    assert {check.level for check in openvino.checks} == set(LEVELS)
    assert {check.level for check in ort.checks} == set(LEVELS)
    assert any(check.name.startswith("kept_visual_indices.") for check in ort.checks)
    assert ort.first_diverging_layer(results.tolerances) is None
    # every LLM layer is localised; vision blocks whose output reaches the graph too
    names = [layer.name for layer in ort.layer_errors]
    assert [n for n in names if n.startswith("llm.")] == [f"llm.layers.{i}" for i in range(4)]
    assert any(n.startswith("vision.blocks.") for n in names)
    assert all(layer.relative_error <= 1e-4 for layer in ort.layer_errors)


@pytest.mark.parametrize(
    ("graph", "node", "layer"),
    [
        ("prefill_224x224.onnx", "/llm/layers.1/mlp/down_proj/MatMul", "llm.layers.1"),
        ("vision_224x224.onnx", "/vision/blocks.1/mlp/fc2/Gemm", "vision.blocks.1"),
    ],
)
def test_one_perturbed_weight_fails_and_names_its_layer(copied_export, graph, node, layer):
    folder = copied_export("tiny-qwen2-vl")
    perturb_weight(folder, graph, node)
    results = check_parity(folder, show_progress=False)
    assert not results
    (ort,) = results.backends
    assert ort.first_diverging_layer(results.tolerances) == layer
    failed = {check.name for check in ort.failures(results.tolerances)}
    assert "prefill.logits" in failed
    # the layers before the perturbed one still agree
    before = [e for e in ort.layer_errors if e.name.split(".")[0] == layer.split(".")[0]]
    assert before[0].name != layer and before[0].relative_error <= 1e-4


def test_fp16_export_is_judged_against_fp16_tolerances(parity_of):
    results = parity_of("tiny-qwen2-vl", "fp16")
    assert results.precision == "fp16" and results.tolerances == TOLERANCES["fp16"]
    assert results, str(results)  # ONNX Runtime's float16 arithmetic and OpenVINO's
    # the same measurements miss the fp32 bounds: fp16 graphs are not fp32-exact
    strict = results.judge(TOLERANCES["fp32"])
    assert not strict
    assert any(check.metric == "relative_error" for check in strict.backends[0].failures(strict.tolerances))


def test_compression_cost_is_reported_separately(parity_of):
    results = parity_of("tiny-qwen2-vl")
    assert set(results.compression) == {"pytorch"}  # ONNX Runtime too with a baseline export (test_baseline.py)
    pytorch = results.compression["pytorch"]
    assert set(pytorch) == {"top1_agreement", "kl_divergence", "exact_match", "token_agreement"}
    assert 0.0 <= pytorch["token_agreement"] <= 1.0
    assert pytorch["kl_divergence"] > 0  # random tiny weights: compression changes the distribution
    assert set(results.near_ties) == {2}  # the default schedule cuts before layer 2 (layer 3 keeps nothing)


@pytest.mark.parametrize("family", ["tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_a_video_export_passes_on_synthetic_clips_and_images(family, video_exports):
    results = check_parity(video_exports(family), show_progress=False)
    assert results, str(results)
    assert len(results.samples) == 4  # cycling over the image, video and mixed buckets
    (ort,) = results.backends
    assert ort.first_diverging_layer(results.tolerances) is None
