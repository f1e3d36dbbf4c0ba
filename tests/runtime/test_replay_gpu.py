"""CUDA-graph replay on a GPU: ONNX Runtime CUDA's captured graphs and the compiled PyTorch prefill give what the plain
runs give. Each test skips, saying why, without an NVIDIA GPU, onnxruntime-gpu, or (TensorRT) an engine this GPU
runs; the bookkeeping itself is tested on the CPU (``test_replay.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from luvc.images import synthetic_image
from luvc.models import EXPORTED_TINY_MODELS
from luvc.parity.text import judge_text
from luvc.parity.tolerances import TOLERANCES
from luvc.runtime.pipeline import Pipeline

pytestmark = pytest.mark.gpu
PROMPT = "What is in this picture?"
TOKENS = 12


def cuda_ep_missing() -> str | None:
    if not torch.cuda.is_available():
        return "needs an NVIDIA GPU with CUDA; none here"
    try:
        import onnxruntime
    except ImportError:
        return "needs onnxruntime-gpu"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "needs onnxruntime-gpu (CUDAExecutionProvider); the CPU package is installed"
    return None


@pytest.fixture
def cuda_ep():
    reason = cuda_ep_missing()
    if reason is not None:
        pytest.skip(reason)


# a replayed call runs the kernels its plain run does, at the same shapes: equal but for the order of atomic adds
REPLAY_TOLERANCE = {"fp32": 1e-5, "fp16": 1e-3}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("family", list(EXPORTED_TINY_MODELS))
def test_each_replayed_call_gives_what_a_plain_run_of_its_feeds_gives(cuda_ep, exports, family, precision, capsys):
    """Every replayed call (captures included) checked against a plain run of the same feeds on the same session
    (``Sessions.verify_replay_tolerance``): where replay goes wrong, the first graph and call that did, not only a
    token later."""
    folder = exports(family, precision)
    pipeline = Pipeline(folder, device="cuda:0", cuda_graphs="on")
    pipeline.sessions.verify_replay_tolerance = REPLAY_TOLERANCE[precision]
    prepared = pipeline.prepare([synthetic_image(224, 224, 4)], [PROMPT])
    for _ in range(2):  # the second request replays every graph the first captured
        pipeline.greedy(prepared, TOKENS)
    assert pipeline.sessions.replay_divergences() == []
    enabled, captured, replays, failed = pipeline.sessions.replay_counts()
    assert (enabled, failed) == (1, 0) and captured >= 4 and replays >= 2 * TOKENS
    assert "CUDA graph capture failed" not in capsys.readouterr().err
    pipeline.release()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("family", list(EXPORTED_TINY_MODELS))
def test_replayed_graphs_give_the_plain_runs_tokens(cuda_ep, exports, family, precision, capsys):
    """Every graph captured and replayed on ONNX Runtime CUDA (a second request replays all of them): the plain run's
    tokens (both pad the prefill alike on a GPU; a first difference only at a near tie, parity's judge at the
    precision's noise), first logits within that noise, no capture refused."""
    folder = exports(family, precision)
    image = synthetic_image(224, 224, 4)
    noise = TOLERANCES[precision].tensor_relative
    plain = Pipeline(folder, device="cuda:0", cuda_graphs="off")
    tokens, logits, _ = plain.greedy(plain.prepare([image], [PROMPT]), TOKENS)
    plain.release()
    replayed = Pipeline(folder, device="cuda:0", cuda_graphs="on")
    prepared = replayed.prepare([image], [PROMPT])
    for _ in range(2):
        replayed_tokens, replayed_logits, _ = replayed.greedy(prepared, TOKENS)
        judged = judge_text([(replayed_tokens, tokens, logits)], noise)
        assert judged.non_ties == 0, judged
        first, plain_first = replayed_logits[:, 0], logits[:, 0]
        assert np.abs(first - plain_first).max() <= noise * np.abs(plain_first).max()
    enabled, captured, replays, failed = replayed.sessions.replay_counts()
    assert (enabled, failed) == (1, 0) and captured >= 4 and replays >= 2 * TOKENS
    assert "CUDA graph capture failed" not in capsys.readouterr().err
    replayed.release()


@pytest.mark.parametrize("family", list(EXPORTED_TINY_MODELS))
def test_an_fp32_export_on_the_gpu_computes_what_it_computes_on_the_cpu(cuda_ep, exports, family):
    """fp32 on ONNX Runtime CUDA is float32 (no TF32 products, ``use_tf32=0``): the first logits within fp32's parity
    bound of the CPU's, and the tokens but for a near tie (the GPU pads the prefill, the CPU does not)."""
    folder = exports(family, "fp32")
    image = synthetic_image(224, 224, 4)
    noise = TOLERANCES["fp32"].tensor_relative
    cpu = Pipeline(folder)
    tokens, logits, _ = cpu.greedy(cpu.prepare([image], [PROMPT]), TOKENS)
    gpu = Pipeline(folder, device="cuda:0", cuda_graphs="off")
    gpu_tokens, gpu_logits, _ = gpu.greedy(gpu.prepare([image], [PROMPT]), TOKENS)
    assert np.abs(gpu_logits[:, 0] - logits[:, 0]).max() <= noise * np.abs(logits[:, 0]).max()
    judged = judge_text([(gpu_tokens, tokens, logits)], noise)
    assert judged.non_ties == 0, judged
    gpu.release()


def test_rows_of_a_replayed_batch_get_what_they_get_alone(cuda_ep, exports):
    """Two prompts of different lengths in one replayed batch (padded to a captured length): each row's tokens are
    those it gets alone, replayed too, but for a near tie."""
    folder = exports("tiny-qwen2-vl", "fp16")
    images = [synthetic_image(224, 224, seed) for seed in (1, 2)]
    prompts = [PROMPT, "Describe every colour you can see, and where."]
    pipeline = Pipeline(folder, device="cuda:0", cuda_graphs="on")
    together, _, _ = pipeline.greedy(pipeline.prepare(images, prompts), TOKENS)
    for row, (image, prompt) in enumerate(zip(images, prompts)):
        alone, logits, _ = pipeline.greedy(pipeline.prepare([image], [prompt]), TOKENS)
        # another batch size runs other fp16 kernels: a first difference only at a near tie
        judged = judge_text([(together[row : row + 1], alone, logits)], TOLERANCES["fp16"].tensor_relative)
        assert judged.non_ties == 0, judged


@pytest.mark.parametrize("family", ["tiny-qwen2-vl"])
def test_shapes_captured_at_load_give_the_plain_tokens_and_a_request_captures_nothing(cuda_ep, exports, family):
    """Capture at load on ONNX Runtime CUDA (``Pipeline.load(capture_rows=1)``, as serve does at its batch): a request
    afterwards replays without capturing, and gives the plain run's tokens but for a near tie."""
    folder = exports(family, "fp16")
    image = synthetic_image(224, 224, 4)
    plain = Pipeline(folder, device="cuda:0", cuda_graphs="off")
    tokens, logits, _ = plain.greedy(plain.prepare([image], [PROMPT]), TOKENS)
    plain.release()
    pipeline = Pipeline(folder, device="cuda:0", cuda_graphs="on")
    prepared = pipeline.prepare([image], [PROMPT])
    pipeline.load(prepared.bucket, capture_rows=1)
    report = pipeline.capture_report
    assert report is not None and report.shapes > 0, report
    captured = pipeline.sessions.replay_counts()[1]
    replayed_tokens, _, _ = pipeline.greedy(prepared, TOKENS)
    assert pipeline.sessions.replay_counts()[1] == captured
    judged = judge_text([(replayed_tokens, tokens, logits)], TOLERANCES["fp16"].tensor_relative)
    assert judged.non_ties == 0, judged
    pipeline.release()


@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-qwen3-vl"])
def test_the_compiled_prefill_with_cuda_graphs_generates_what_eager_does(family):
    """PyTorch on the GPU: the LLM prefill compiled with CUDA graphs (``mode="reduce-overhead"``), two requests in a
    row (the second replays), gives eager's tokens; a request's cache survives the next one's replay."""
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with CUDA; none here")
    from luvc.models import load_model
    from luvc.models.generation import greedy_generate

    adapter = load_model(family)
    adapter.apply_luvc()
    adapter.model.to("cuda", torch.float32)
    inputs = adapter.prepare_inputs([synthetic_image(224, 224, 3)], PROMPT)
    inputs = {key: value.to("cuda") if torch.is_tensor(value) else value for key, value in inputs.items()}
    eager = greedy_generate(adapter.model, inputs, TOKENS)
    adapter.compile_llm(cuda_graphs=True)
    for _ in range(3):  # the plan's first prefill runs eagerly, then compiled (captured), then replayed
        np.testing.assert_array_equal(greedy_generate(adapter.model, inputs, TOKENS).cpu(), eager.cpu())
    assert adapter.language_model.luvc_compiled.calls == 2
