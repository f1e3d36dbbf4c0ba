"""Gemma 3 exported: the prefill graph carries each image's both-ways mask over its kept tokens, rows of different
lengths run together, parity passes in every calibrated precision on ONNX Runtime and OpenVINO, TensorRT-RTX builds
every graph, and an export whose requests would outgrow the sliding window is refused in one line.

Its own module, apart from the all-family export tests (``tests.conftest.OWN_EXPORT_MODULES``)."""

import pytest

from luvc.cli.main import main
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
