"""Gemma 3 exported: the prefill graph carries each image's both-ways mask over its kept tokens, rows of different
lengths run together, parity passes in every calibrated precision on ONNX Runtime and OpenVINO, TensorRT-RTX builds
every graph, and an export whose requests would outgrow the sliding window is refused in one line.

Its own module, apart from the all-family export tests (``tests.conftest.OWN_EXPORT_MODULES``)."""

import numpy as np
import pytest
import torch

from luvc.cli.main import main
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.generation import greedy_generate
from luvc.parity import check_parity
from luvc.runtime.pipeline import Pipeline
from luvc.samples import synthetic_samples

FAMILY = "tiny-gemma3"
PROMPTS = ["Describe the picture.", "What is in this picture? Answer in a few words, and say where it is, please."]


@pytest.fixture(scope="module")
def export(exports):
    return exports(FAMILY)


def test_rows_of_different_lengths_generate_what_pytorch_luvc_generates_for_each(export):
    # the rows' images sit at the same offset and their text after it differs: the shorter row is padded on the right
    adapter = load_model(FAMILY)
    adapter.apply_luvc()
    images = [synthetic_image(224, 224, seed) for seed in (7, 8)]
    pipeline = Pipeline(export)
    prepared = pipeline.prepare(images, PROMPTS)
    assert prepared.prompts.lengths[0] < prepared.prompts.lengths[1]
    tokens, _, _ = pipeline.greedy(prepared, 8)
    eos = adapter.stop_token_ids
    for row, (image, prompt) in enumerate(zip(images, PROMPTS)):
        inputs = adapter.prepare_inputs([image], prompt)
        length = int(prepared.prompts.lengths[row])  # the runtime's prompt text is the adapter's (image sequence too)
        assert prepared.prompts.input_ids[row, :length].tolist() == inputs["input_ids"][0].tolist()
        with torch.no_grad():
            expected = greedy_generate(adapter.model, inputs, 8, eos_token_id=eos)
        np.testing.assert_array_equal(tokens[row][: expected.shape[1]], expected[0].numpy())


@pytest.mark.parametrize("precision", ["fp32", "int8", "int8w", "int4"])
def test_parity_passes(precision, export, tmp_path):
    from luvc.calibration import calibrate_export

    folder = export
    if precision != "fp32":
        folder = calibrate_export(export, tmp_path / precision, precision=precision, show_progress=False)
    results = check_parity(folder, samples=synthetic_samples([(224, 224)], count=2), show_progress=False)
    assert results, str(results)
    if precision == "fp32":
        assert results.backends[0].first_diverging_layer(results.tolerances) is None


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
    assert {"vision_224x224", "prefill_224x224", "decode", "prefill_text"} <= set(engines.engines)


def test_a_request_longer_than_the_sliding_window_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    # the tiny model's window is 512 positions: 16 image tokens, 400 of text and 200 generated do not fit
    argv = ["export", "--model", FAMILY, "--out", str(out), "--max-text-tokens", "400", "--max-new-tokens", "200"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "Traceback" not in error
    assert "sliding-window layers see the last 512 positions" in error.splitlines()[-1]
    assert "lower them to fit 512" in error.splitlines()[-1]
    assert not out.exists()


def test_the_default_lengths_fit_the_window():
    from luvc.export.profile import ExportProfile

    profile = ExportProfile().resolve(load_model(FAMILY))
    assert (profile.max_text_tokens, profile.max_new_tokens) == (128, 128)  # a quarter of the 512-position window
