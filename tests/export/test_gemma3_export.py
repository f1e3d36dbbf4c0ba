"""Gemma 3 exported: the prefill graph carries each image's both-ways mask over its kept tokens, rows of different
lengths run together, parity passes in every calibrated precision on ONNX Runtime and OpenVINO, TensorRT-RTX builds
every graph, and requests longer than the sliding window generate what PyTorch LUVC generates.

Its own module, apart from the all-family export tests (``tests.conftest.OWN_EXPORT_MODULES``)."""

import numpy as np
import pytest
import torch

from luvc.models import load_model
from luvc.runtime.pipeline import Pipeline
from tests.export.own_family import (
    PRECISIONS,
    built_engines,
    check_openvino_parity,
    check_rows_of_different_lengths,
    parity_of,
)

FAMILY = "tiny-gemma3"


@pytest.fixture(scope="module")
def export(exports):
    return exports(FAMILY)


def test_rows_of_different_lengths_generate_what_pytorch_luvc_generates_for_each(export):
    # the rows' images sit at the same offset and their text after it differs: the image's mask is the same span
    check_rows_of_different_lengths(FAMILY, export)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_parity_passes(precision, export, tmp_path):
    results = parity_of(export, precision, tmp_path)
    if precision == "fp32":  # each block against PyTorch, a SigLIP block's output before its OIM merge
        assert results.backends[0].first_diverging_layer(results.tolerances) is None


def test_openvino_passes_parity(export):
    check_openvino_parity(export)


def test_tensorrt_rtx_builds_every_graph(export, tmp_path):
    assert {"vision_224x224", "prefill_224x224", "decode", "prefill_text"} <= built_engines(export, tmp_path)


def test_the_runtime_writes_an_image_as_gemma3s_processor_does(export):
    from luvc.prompt import Conversation, Turn

    pipeline = Pipeline(export)
    prompt_ids, bucket = pipeline.preparer.prompt_ids, pipeline.manifest.buckets["224x224"]
    image = "\n\n<start_of_image>" + "<image_soft_token>" * 16 + "<end_of_image>\n\n"  # the processor's text
    turn = "<start_of_turn>user\n" + image + "What is this?<end_of_turn>\n<start_of_turn>model\n"
    assert prompt_ids.text("What is this?", bucket) == turn
    conversation = Conversation((Turn("user", "Hi.", visual=True), Turn("assistant", "Hello."), Turn("user", "Why?")))
    assert prompt_ids.text(conversation, bucket) == (
        "<start_of_turn>user\n" + image + "Hi.<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n"
    )


WINDOW = 36  # positions: the window's edge crosses the image (at 8..24) while the first row prefills and decodes


@pytest.fixture(scope="module")
def narrow_export(tmp_path_factory):
    """tiny-gemma3 with a window of ``WINDOW`` positions, exported fp32 (requests of up to 150 tokens)."""
    from luvc.export.exporter import export_model
    from luvc.export.profile import ExportProfile
    from tests.models.test_gemma3 import narrow_window

    adapter = load_model(FAMILY)
    narrow_window(adapter.model, WINDOW)
    folder = tmp_path_factory.mktemp("narrow") / "export"
    profile = ExportProfile(max_text_tokens=96, max_new_tokens=32)
    return export_model(adapter, folder, profile, show_progress=False)


@pytest.mark.slow  # an export of its own
@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_requests_longer_than_the_sliding_window_generate_what_pytorch_luvc_generates(backend, narrow_export):
    """Two rows of different lengths, each longer than the window, in one batch: every step's logits are PyTorch
    LUVC's (its sliding layers masked by the positions their keys hold), the window's edge crossing the first row's
    kept image tokens during the prefill and the decode, and the second row's during its prefill; on ONNX Runtime and
    on OpenVINO (f32)."""
    from luvc.images import synthetic_image
    from luvc.models.generation import greedy_generate
    from tests.models.test_gemma3 import narrow_window

    adapter = load_model(FAMILY)
    narrow_window(adapter.model, WINDOW)
    adapter.apply_luvc()
    pipeline = Pipeline(narrow_export, backend=backend, openvino_precision="f32")
    assert pipeline.manifest.geometry.sliding_window == WINDOW
    prompts = ["Describe it.", "What is in this picture? Answer in a few words, and say where it is, please."]
    images = [synthetic_image(224, 224, seed) for seed in (7, 8)]
    prepared = pipeline.prepare(images, prompts)
    lengths = prepared.prompts.lengths.tolist()
    assert WINDOW < lengths[0] < 8 + 16 + WINDOW < lengths[1]  # the first row's edge is in the image as it decodes
    steps = 20
    tokens, logits, _ = pipeline.greedy(prepared, steps)
    for row, (image, prompt) in enumerate(zip(images, prompts)):
        inputs = adapter.prepare_inputs([image], prompt)
        with torch.no_grad():
            expected, expected_logits = greedy_generate(adapter.model, inputs, steps, return_logits=True)
        np.testing.assert_array_equal(tokens[row], expected[0].numpy())
        np.testing.assert_allclose(logits[row], expected_logits[0].numpy(), atol=2e-4, rtol=1e-3)
    # and the window changed them: the same model seeing every position answers otherwise
    wide = load_model(FAMILY)
    wide.apply_luvc()
    with torch.no_grad():
        _, wide_logits = greedy_generate(
            wide.model, adapter.prepare_inputs([images[0]], prompts[0]), steps, return_logits=True
        )
    assert not np.allclose(logits[0], wide_logits[0].numpy(), atol=1e-2)


@pytest.mark.slow  # the export of its own above
def test_a_prompt_without_an_image_longer_than_the_sliding_window_runs_as_pytorch_runs_it(narrow_export):
    """The text prefill graph (no visuals, nothing pruned) masks the window too, and its steps start where it left."""
    from luvc.models.generation import greedy_generate
    from tests.models.test_gemma3 import narrow_window

    adapter = load_model(FAMILY)
    narrow_window(adapter.model, WINDOW)
    adapter.apply_luvc()
    pipeline = Pipeline(narrow_export)
    prepared = pipeline.prepare(None, ["Tell me a story about a river, a bridge and a boat, in three sentences."])
    assert prepared.prompts.lengths[0] > WINDOW
    tokens, logits, _ = pipeline.greedy(prepared, 12)
    ids = torch.from_numpy(prepared.prompts.input_ids).long()
    with torch.no_grad():
        expected, expected_logits = greedy_generate(
            adapter.model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 12, return_logits=True
        )
    np.testing.assert_array_equal(tokens[0], expected[0].numpy())
    np.testing.assert_allclose(logits[0], expected_logits[0].numpy(), atol=2e-4, rtol=1e-3)


def test_the_default_lengths_are_every_familys():
    from luvc.export.profile import ExportProfile

    profile = ExportProfile().resolve(load_model(FAMILY))
    assert (profile.max_text_tokens, profile.max_new_tokens) == (512, 256)  # the window (512) no longer bounds them
