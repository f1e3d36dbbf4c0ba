"""Which sessions a request opens, and sessions opened side by side in the background (ONNX Runtime on the CPU) while
the caller loads the tokenizer and processor: the same answers as sessions opened one by one, failures said where a
session is used, and nothing left opening after a release."""

import threading

import numpy as np
import pytest

from luvc.errors import LuvcError
from luvc.images import synthetic_image
from luvc.runtime.opening import EVERY_REQUEST_GRAPHS
from luvc.runtime.pipeline import GenerationOptions, Pipeline

PROMPT = "What is in this picture?"


def _opening_threads() -> set[threading.Thread]:
    """The threads alive now that open sessions (those of other pipelines in this process too)."""
    return {thread for thread in threading.enumerate() if thread.name.startswith("luvc-open")}


def test_a_request_opens_its_own_buckets_graphs_and_no_text_prefill(exports):
    pipeline = Pipeline(exports("tiny-qwen2-vl"))  # several image buckets and a text prefill
    manifest = pipeline.manifest
    buckets = list(manifest.buckets.values())
    assert len(buckets) > 1 and manifest.text_prefill
    first = buckets[0]
    assert pipeline.request_graphs(first) == ["embed", "decode", first.vision, first.prefill]
    assert pipeline.request_graphs(text_only=True) == ["embed", "decode", manifest.text_prefill]
    every = pipeline.request_graphs()
    assert set(every) == {"embed", "decode", manifest.text_prefill} | {
        graph for bucket in buckets for graph in (bucket.vision, bucket.prefill)
    }
    assert len(every) == len(set(every))
    before = _opening_threads()
    pipeline.load(first)
    assert set(pipeline.sessions.opened()) == set(pipeline.request_graphs(first))
    # once its sessions are open no opening thread stays behind, though the pipeline lives on: a process with
    # threads must not fork (the exporter's graph workers refuse to)
    assert _opening_threads() <= before


@pytest.mark.parametrize("precision", ["fp32", pytest.param("int8w", marks=pytest.mark.slow)])
def test_sessions_opened_in_the_background_answer_as_sessions_opened_one_by_one(exports, tmp_path, precision):
    folder = exports("tiny-llava")
    if precision == "int8w":  # quantized graphs pack their weights when their sessions open
        from luvc.calibration import calibrate_export

        folder = calibrate_export(folder, tmp_path / "int8w", precision="int8w", show_progress=False)
    image, options = synthetic_image(224, 224, 3), GenerationOptions(6, stop_token_ids=())
    before = _opening_threads()
    one_by_one = Pipeline(folder)  # a request opens each session as it first runs it, on this thread
    expected = one_by_one.generate(image, PROMPT, options)
    assert _opening_threads() <= before
    one_by_one.release()

    background = Pipeline(folder)
    graphs = background.request_graphs(next(iter(background.manifest.buckets.values())))
    background.begin_loading(graphs)
    assert _opening_threads() - before  # opening while this thread goes on
    prepared = background.prepare([image], [PROMPT])
    background.load(prepared.bucket)
    assert set(background.sessions.opened()) == set(graphs)
    assert background.sessions.opening_seconds() > 0
    got = background.generate(prepared, options=options)
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    background.release()


def test_a_session_that_fails_to_open_in_the_background_is_named_where_it_is_used(copied_export):
    folder = copied_export("tiny-llava")
    pipeline = Pipeline(folder)
    (folder / pipeline.manifest.graphs["decode"].file).unlink()  # after the pipeline checked the export
    pipeline.begin_loading(EVERY_REQUEST_GRAPHS)  # no error yet: the decode graph fails on its thread
    with pytest.raises(LuvcError, match=r"decode\.onnx is missing; copy the whole export folder"):
        pipeline.load(text_only=True)


def test_a_release_while_sessions_open_closes_them_and_their_threads(exports):
    before = _opening_threads()
    pipeline = Pipeline(exports("tiny-llava"))
    pipeline.begin_loading(pipeline.request_graphs())
    opening = _opening_threads() - before
    assert opening
    pipeline.release()
    assert pipeline.sessions.opened() == {} and pipeline.sessions.providers_in_use() == []
    assert not any(thread.is_alive() for thread in opening)  # ended by the time release returns
    generation = pipeline.generate(synthetic_image(224, 224, 1), PROMPT, GenerationOptions(2, stop_token_ids=()))
    assert generation.tokens.shape == (1, 2)


def test_openings_cancelled_before_they_began_open_on_use(exports):
    pipeline = Pipeline(exports("tiny-qwen2-vl"))
    graphs = pipeline.request_graphs()
    assert len(graphs) > 4  # more than the threads open at once here
    pipeline.begin_loading(graphs)
    pipeline.sessions.cancel_opening()  # what run does on an error before the request
    bucket = next(iter(pipeline.manifest.buckets.values()))
    generation = pipeline.generate(synthetic_image(*bucket.size, 2), PROMPT, GenerationOptions(2, stop_token_ids=()))
    assert generation.tokens.shape == (1, 2)
    assert set(pipeline.request_graphs(bucket)) <= set(pipeline.sessions.opened())
    pipeline.release()


# opens every graph of a request through the opener `run` makes before it imports the runtime, in a process where
# importing torch fails: the opening must not need it
OPEN_WITHOUT_TORCH = """
import json, sys
sys.modules["torch"] = None  # `import torch` raises ImportError from here on
from luvc.runtime.opening import GraphOpener, request_graphs
opener = GraphOpener.for_cpu_start(sys.argv[1], sys.argv[2])
graphs = request_graphs(opener.manifest, opener.backend, next(iter(opener.manifest.buckets.values())))
opener.begin(graphs)
opened = {name: type(opener.take(name)).__name__ for name in graphs}
print(json.dumps({"opened": opened, "threads": opener.threads}))
"""


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_a_cpu_start_opens_its_graphs_without_torch(exports, backend):
    import json
    import subprocess
    import sys

    folder = exports("tiny-llava")
    done = subprocess.run(
        [sys.executable, "-c", OPEN_WITHOUT_TORCH, str(folder), backend], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    kind = {"ort": "OrtGraph", "openvino": "CompiledGraph"}[backend]
    bucket = next(iter(Pipeline(folder, backend=backend).manifest.buckets.values()))
    assert found["opened"] == {name: kind for name in ["embed", "decode", bucket.vision, bucket.prefill]}
    assert found["threads"] >= 1


# `luvc-export run` in a process that notes, at each opener's begin, whether torch was imported yet
RUN_NOTING_TORCH = """
import json, sys
from luvc.runtime import opening
began = []
real_begin = opening.GraphOpener.begin
def begin(self, names):
    names = list(names)
    began.append({"torch_imported": "torch" in sys.modules, "graphs": names})
    real_begin(self, names)
opening.GraphOpener.begin = begin
from luvc.cli.main import main
code = main(["run", sys.argv[1], "--prompt", "hello", "--max-new-tokens", "2", *sys.argv[2:]])
print(json.dumps({"code": code, "began": began}))
"""


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_run_begins_opening_its_graphs_before_it_imports_torch(exports, backend):
    import json
    import subprocess
    import sys

    folder = exports("tiny-llava")  # one image bucket: run knows the request's graphs before the image is fitted
    command = [sys.executable, "-c", RUN_NOTING_TORCH, str(folder), "--backend", backend]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["code"] == 0
    first = found["began"][0]
    bucket = next(iter(Pipeline(folder, backend=backend).manifest.buckets.values()))
    assert first == {"torch_imported": False, "graphs": ["embed", "decode", bucket.vision, bucket.prefill]}
    assert "Output:" in done.stdout


def test_run_on_a_gpu_or_with_plugin_nodes_opens_nothing_before_the_runtime(exports, tmp_path):
    from luvc.runtime.opening import GraphOpener

    folder = exports("tiny-llava")
    assert GraphOpener.for_cpu_start(folder, "trt") is None
    assert GraphOpener.for_cpu_start(folder, "ort", ["CUDAExecutionProvider", "CPUExecutionProvider"]) is None
    opener = GraphOpener.for_cpu_start(folder, "ort")
    assert opener is not None and opener.threads >= 1
    with pytest.raises(ValueError, match="cannot open openvino graphs"):
        Pipeline(folder, backend="openvino", opener=opener)
    with pytest.raises(ValueError, match=f"an opener of the export in {folder} cannot open the graphs of"):
        Pipeline(exports("tiny-qwen2-vl"), opener=opener)
