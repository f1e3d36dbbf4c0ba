"""CUDA-graph replay bookkeeping (``luvc.runtime.replay``), through the session seam on the CPU: the CUDA EP cannot load
here, so ONNX Runtime's CPU EP runs the same captures (each slot an IO binding of its own, bound once to the
replayer's buffers) and ``run`` the same requests; what only a GPU shows is in ``tests/runtime/test_replay_gpu.py``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from luvc.engines.static_shapes import PREFILL_LENGTH_STEP
from luvc.errors import LuvcError
from luvc.export.manifest import ExportManifest
from luvc.images import synthetic_image
from luvc.runtime.base_session import SessionSetup
from luvc.runtime.ort_opening import ort_providers, with_cuda_graphs
from luvc.runtime.ort_session import GRAPH_ID, OrtGraphCapture, OrtSession
from luvc.runtime.pipeline import Pipeline
from luvc.runtime.replay import MAX_CAPTURED, Replayer, resolve_cuda_graphs, shape_key
from luvc.runtime.sessions import RuntimeChoices, Sessions
from tests.runtime.replaying import plain_tokens, replaying_pipeline

PROMPT = "What is in this picture?"


def scale_and_update(tmp_path) -> OrtSession:
    """A graph with a dynamic batch: ``y = 2 x`` and a cache updated in place at a write index (the decode graph's
    pattern, ``TensorScatter``-like: ``ScatterElements`` into the cache, read back as an output)."""
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["y"]),
        helper.make_node("ScatterElements", ["cache", "index", "x"], ["cache_out"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("cache", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("index", TensorProto.INT64, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("cache_out", TensorProto.FLOAT, ["batch", 8]),
        ],
        [onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    from luvc.export.manifest_entries import TensorEntry

    inputs = [
        TensorEntry("x", "float", ("batch", 1)),
        TensorEntry("cache", "float", ("batch", 8)),
        TensorEntry("index", "int64", ("batch", 1)),
    ]
    outputs = [TensorEntry("y", "float", ("batch", 1)), TensorEntry("cache_out", "float", ("batch", 8))]
    setup = SessionSetup(cuda_graphs=True, replay_bound=frozenset({"cache", "cache_out"}))  # the cache's own buffer
    return OrtSession(path, inputs, outputs, setup).activate()


def step(session: OrtSession, cache: torch.Tensor, values: list[float], position: int) -> torch.Tensor:
    x = torch.tensor(values).reshape(-1, 1)
    index = torch.full((len(values), 1), position, dtype=torch.int64)
    rows = cache[: len(values)]
    return session.infer({"x": x, "cache": rows, "index": index}, targets={"cache_out": rows})["y"]


def test_each_shape_is_captured_once_and_its_buffers_serve_every_later_step(tmp_path):
    session = scale_and_update(tmp_path)
    assert isinstance(session.replayer.backend, OrtGraphCapture) and session.replayer.active
    cache = torch.zeros(4, 8)
    for position in range(3):  # three steps of batch 2: one capture, then replays with new values
        y = step(session, cache, [1.0 + position, -1.0 - position], position)
        np.testing.assert_array_equal(y.numpy(), [[2.0 + 2 * position], [-2.0 - 2 * position]])
    assert len(session.replayer.captured) == 1 and session.replayer.replays == 3
    # the cache was written in place, step by step, at the caller's address (bound as it is, never copied)
    np.testing.assert_array_equal(cache[:2, :3].numpy(), [[1, 2, 3], [-1, -2, -3]])
    (entry,) = session.replayer.captured.values()
    assert entry.inputs["cache"].data_ptr() == cache.data_ptr()
    assert {"x", "index"} == entry.own_inputs and {"y"} == entry.own_outputs
    own_x = entry.inputs["x"].data_ptr()

    y = step(session, cache, [5.0, 6.0, 7.0], 3)  # a new batch size: a capture of its own
    np.testing.assert_array_equal(y.numpy().ravel(), [10.0, 12.0, 14.0])
    assert len(session.replayer.captured) == 2
    step(session, cache, [8.0, 9.0], 4)  # batch 2 again: its first capture, its first buffers
    assert len(session.replayer.captured) == 2 and session.replayer.captured[next(iter(session.replayer.captured))]
    assert entry.inputs["x"].data_ptr() == own_x
    np.testing.assert_array_equal(cache[:2, 3:5].numpy(), [[5, 8], [6, 9]])
    # each slot selects its graph by id, and a plain run asks for none
    assert [slot for slot in session.replayer.backend.slots] == [1, 2]


def test_shape_keys_tell_shapes_dtypes_and_bound_addresses_apart():
    cache = torch.zeros(2, 8)
    other_cache = torch.zeros(2, 8)
    x = torch.zeros(2, 1)
    bound = frozenset({"cache", "cache_out"})
    key = shape_key({"x": x, "cache": cache}, {"cache_out": cache}, bound)
    assert key == shape_key({"x": torch.ones(2, 1), "cache": cache}, {"cache_out": cache}, bound)  # values do not count
    assert key != shape_key({"x": torch.zeros(3, 1), "cache": cache}, {"cache_out": cache}, bound)
    assert key != shape_key({"x": x.double(), "cache": cache}, {"cache_out": cache}, bound)
    assert key != shape_key({"x": x, "cache": other_cache}, {"cache_out": other_cache}, bound)  # another buffer
    # the alternating sets of a cache: past in one, present in the other, each pair its own graph
    assert shape_key({"x": x, "cache": cache}, {"cache_out": other_cache}, bound) != shape_key(
        {"x": x, "cache": other_cache}, {"cache_out": cache}, bound
    )
    # a tensor not bound is copied into the replayer's buffer: its address does not select a graph
    assert shape_key({"x": x, "cache": cache}, {"cache_out": torch.zeros(2, 8)}) == shape_key(
        {"x": torch.zeros(2, 1), "cache": other_cache}, {"cache_out": torch.zeros(2, 8)}
    )


class RefusingCapture:
    """A backend whose capture fails as a driver refuses one (out of memory), after a replay that worked."""

    def __init__(self, fail_on: int) -> None:
        self.fail_on, self.captures = fail_on, 0

    def capture(self, slot, inputs, outputs) -> None:
        self.captures += 1
        if self.captures == self.fail_on:
            raise RuntimeError("CUDA error: out of memory\nsecond line of the driver's message")
        outputs["y"].copy_(inputs["x"] * 2)
        self.bound = (inputs, outputs)

    def replay(self, slot) -> None:
        inputs, outputs = self.bound
        outputs["y"].copy_(inputs["x"] * 2)

    def release(self, slot) -> None:
        self.bound = None


class FrozenCapture:
    """A backend whose captured graph keeps what it read at capture (as a host-side value baked into a CUDA graph
    would): its replays ignore new inputs."""

    def capture(self, slot, inputs, outputs) -> None:
        self.frozen, self.outputs = inputs["x"].clone(), outputs
        outputs["y"].copy_(self.frozen * 2)

    def replay(self, slot) -> None:
        self.outputs["y"].copy_(self.frozen * 2)

    def release(self, slot) -> None:
        self.frozen = self.outputs = None


class SlotRecording:
    """A backend that keeps what each slot was bound to, and forgets a released slot."""

    def __init__(self) -> None:
        self.slots: dict[int, tuple] = {}

    def capture(self, slot, inputs, outputs) -> None:
        self.slots[slot] = (inputs, outputs)
        self.replay(slot)

    def replay(self, slot) -> None:
        inputs, outputs = self.slots[slot]
        outputs["y"].copy_(inputs["x"] * 2)

    def release(self, slot) -> None:
        del self.slots[slot]


def test_graphs_bound_to_released_memory_go_and_their_slots_are_never_given_again():
    backend = SlotRecording()
    replayer = Replayer("ort:decode", backend, bound=frozenset({"cache"}))
    cache, other = torch.zeros(2, 8), torch.zeros(2, 8)
    for rows in (1, 2):  # two shapes, both bound to ``cache`` (fed and written: in place)
        view = cache[:rows]
        replayer.run({"x": torch.ones(rows, 1), "cache": view}, {"y": torch.empty(rows, 1), "cache": view}, None)
    replayer.run({"x": torch.ones(1, 1), "cache": other[:1]}, {"y": torch.empty(1, 1), "cache": other[:1]}, None)
    assert sorted(backend.slots) == [1, 2, 3]
    assert replayer.release_bound_to([cache]) == 2
    assert sorted(backend.slots) == [3] and len(replayer.captured) == 1
    y = torch.empty(1, 1)
    replayer.run({"x": torch.full((1, 1), 3.0), "cache": cache[:1]}, {"y": y, "cache": cache[:1]}, None)
    assert sorted(backend.slots) == [3, 4] and y.item() == 6.0  # captured anew, in a new slot


def test_verifying_names_the_first_replayed_call_that_differs_from_the_plain_run():
    replayer = Replayer("ort:decode", FrozenCapture())
    replayer.verify_tolerance = 1e-6
    plain_runs = []

    def plain(feeds, outputs):
        plain_runs.append(feeds["x"].tolist())
        outputs["y"].copy_(feeds["x"] * 2)

    for value in (1.0, 1.0, 3.0, 4.0):
        replayer.run({"x": torch.tensor([value])}, {"y": torch.empty(1)}, plain)
    assert plain_runs == [[1.0], [1.0], [3.0], [4.0]]  # each call checked against a plain run of its feeds
    assert [str(d) for d in replayer.divergences] == [
        "call 3 (replayed): y differs by 0.667 of its largest value",  # 2 against 6
        "call 4 (replayed): y differs by 0.75 of its largest value",  # 2 against 8
    ]


def test_verifying_a_real_session_finds_its_replays_equal_to_plain_runs(tmp_path):
    session = scale_and_update(tmp_path)
    session.replayer.verify_tolerance = 0.0
    cache = torch.zeros(2, 8)
    for position in range(3):
        y = step(session, cache, [1.0 + position, -1.0 - position], position)
        np.testing.assert_array_equal(y.numpy(), [[2.0 + 2 * position], [-2.0 - 2 * position]])
    # the plain run wrote the in-place cache again, with the same values
    np.testing.assert_array_equal(cache[:, :3].numpy(), [[1, 2, 3], [-1, -2, -3]])
    assert session.replayer.calls == 3 and session.replayer.replays == 3 and session.replayer.divergences == []


def test_a_failed_capture_warns_once_and_the_graph_runs_plain_from_then_on(capsys):
    plain_runs = []

    def plain(feeds, outputs):
        plain_runs.append(feeds["x"].shape)
        outputs["y"].copy_(feeds["x"] * 2)

    replayer = Replayer("ort:decode", RefusingCapture(fail_on=2))
    for rows in (1, 1, 2, 2, 1):
        x = torch.arange(rows, dtype=torch.float32) + 1
        outputs = {"y": torch.empty(rows)}
        replayer.run({"x": x}, outputs, plain)
        np.testing.assert_array_equal(outputs["y"].numpy(), (x * 2).numpy())  # never another answer
    assert not replayer.active and plain_runs == [(2,), (2,), (1,)]  # the failed shape, and everything after
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: ort:decode: CUDA graph capture failed (RuntimeError: CUDA error: out of memory); this graph runs "
        "without replay from now on."
    ]
    assert replayer.describe() == "ort:decode: not replayed (RuntimeError: CUDA error: out of memory)"


def test_past_the_buffer_limit_new_shapes_run_plain(monkeypatch, capsys):
    monkeypatch.setattr("luvc.cuda_graphs.MAX_BUFFER_BYTES", 64)  # two float32 tensors of 4 (in and out): 32 bytes
    replayer = Replayer("ort:prefill_224x224", RefusingCapture(fail_on=0))
    ran = []
    for rows in (4, 4, 2, 8):  # 32 bytes, again, 16 more (48), 64 more: refused
        replayer.run({"x": torch.ones(rows)}, {"y": torch.empty(rows)}, lambda feeds, out: ran.append(len(out["y"])))
    assert ran == [8] and len(replayer.captured) == 2 and replayer.buffer_bytes == 48
    err = capsys.readouterr().err
    assert "ort:prefill_224x224: its buffers would take 112 bytes, past the limit of 64; new shapes run without" in err


def test_past_the_capture_limit_new_shapes_run_plain(monkeypatch, capsys):
    monkeypatch.setattr("luvc.runtime.replay.MAX_CAPTURED", 2)
    replayer = Replayer("ort:decode", RefusingCapture(fail_on=0))
    ran = []
    for rows in (1, 2, 3, 1, 3):
        replayer.run({"x": torch.ones(rows)}, {"y": torch.empty(rows)}, lambda feeds, out: ran.append(len(out["y"])))
    assert ran == [3, 3] and len(replayer.captured) == 2 and replayer.active
    assert capsys.readouterr().err.count("shapes captured; new shapes run without CUDA graphs") == 1
    assert MAX_CAPTURED >= 64  # decode alone: a graph per batch size and attention window


def test_a_session_onnx_runtime_refuses_falls_back_with_one_warning(tmp_path, capsys, monkeypatch):
    """enable_cuda_graph refused at session creation (as for a graph with nodes on the CPU): the session opens plain."""
    from luvc.runtime import ort_opening

    real = ort_opening.inference_session

    def refuse_cuda_graphs(ort, model, options, providers):
        if "marker" in providers:  # what with_cuda_graphs gives below
            raise RuntimeError("This session cannot use the graph capture feature as requested by the user")
        return real(ort, model, options, providers)

    monkeypatch.setattr(ort_opening, "inference_session", refuse_cuda_graphs)
    monkeypatch.setattr(ort_opening, "with_cuda_graphs", lambda providers: [*providers, "marker"])
    session = scale_and_update(tmp_path)
    assert not session.replayer.active
    assert "refused enable_cuda_graph: This session cannot use the graph capture" in capsys.readouterr().err
    cache = torch.zeros(2, 8)
    np.testing.assert_array_equal(step(session, cache, [1.0, 2.0], 0).numpy().ravel(), [2.0, 4.0])


def test_the_cuda_ep_gets_enable_cuda_graph_and_plain_runs_name_no_graph(tmp_path):
    providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert with_cuda_graphs(providers) == [
        ("CUDAExecutionProvider", {"device_id": 0, "enable_cuda_graph": "1"}),
        "CPUExecutionProvider",
    ]
    assert with_cuda_graphs(["CUDAExecutionProvider"]) == [("CUDAExecutionProvider", {"enable_cuda_graph": "1"})]
    assert with_cuda_graphs(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    # float32 products stay float32 on the GPU (the CUDA EP would use TF32 by default)
    assert ort_providers(torch.device("cuda", 1), stream=7)[0] == (
        "CUDAExecutionProvider",
        {
            "device_id": 1,
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "HEURISTIC",
            "do_copy_in_default_stream": "0",
            "use_tf32": "0",
            "user_compute_stream": "7",
        },
    )
    session = scale_and_update(tmp_path)
    assert session.run_options.get_run_config_entry(GRAPH_ID) == "-1"
    step(session, torch.zeros(2, 8), [1.0, 2.0], 0)
    (slot,) = session.replayer.backend.slots
    assert session.replayer.backend.slots[slot][1].get_run_config_entry(GRAPH_ID) == str(slot) == "1"


@pytest.mark.parametrize(
    ("choice", "device", "replays"),
    # auto does not replay on CUDA until the GPU check passes again (luvc.cuda_graphs.RUNTIME_REPLAY_BY_DEFAULT)
    [(None, "cuda", False), ("auto", "cpu", False), ("on", "cuda", True), ("off", "cuda", False)],
)
def test_the_option_resolves_per_device(choice, device, replays):
    assert resolve_cuda_graphs(choice, torch.device(device)) is replays


def test_the_option_refuses_on_without_a_gpu_and_unknown_values():
    with pytest.raises(LuvcError, match="need a CUDA device; it runs on cpu"):
        resolve_cuda_graphs("on", torch.device("cpu"))
    with pytest.raises(LuvcError, match=r"--cuda-graphs 'yes' is not one of \['auto', 'on', 'off'\]"):
        resolve_cuda_graphs("yes", torch.device("cpu"))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-qwen3-vl"])
def test_a_pipeline_replaying_every_graph_generates_what_it_generates_plainly(exports, family):
    """Every replayed graph of a request through the replayer (the prefill padded to a captured length, decode with
    the KV cache updated in place, embed), on ONNX Runtime's CPU EP: the tokens of a plain run, and its logits to
    float32 rounding."""
    folder = exports(family)
    image = synthetic_image(224, 224, 4)
    plain = Pipeline(folder)
    tokens, logits, _ = plain.greedy(plain.prepare([image], [PROMPT]), 12)

    replayed = replaying_pipeline(folder)  # as on a GPU
    replayed.sessions.verify_replay_tolerance = 0.0  # each replayed call against a plain run of its feeds
    prepared = replayed.prepare([image], [PROMPT])
    for _ in range(2):  # the second request replays every graph the first captured
        replayed_tokens, replayed_logits, request = replayed.greedy(prepared, 12)
        np.testing.assert_array_equal(replayed_tokens, tokens)
        np.testing.assert_allclose(replayed_logits, logits, rtol=1e-5, atol=1e-5)
    # the prompt was padded to a captured length (the decode steps overwrite the padding, and no step reads it)
    assert request.prefill_feeds["inputs_embeds"].shape[1] % PREFILL_LENGTH_STEP == 0
    assert prepared.prompts.input_ids.shape[1] % PREFILL_LENGTH_STEP
    enabled, captured, replays, failed = replayed.sessions.replay_counts()
    # prefill, decode (one attention window: 12 tokens stay within 64) and embed at two shapes (the prompt, then one
    # token per step); vision runs plain (compute-bound: replayed, it ran slower on an H200)
    assert (enabled, failed) == (1, 0) and captured == 4
    assert replays == 2 * (1 + 1 + 11 + 11)  # per request: the prompt's embed, prefill, 11 embeds, 11 decodes
    assert replayed.sessions.replay_summary() == "4 shapes of 3 graphs captured, 48 runs replayed"
    assert replayed.sessions.replay_divergences() == []
    vision = next(session for name, session in replayed.sessions.opened().items() if name.startswith("vision"))
    assert vision.replayer is None


def test_a_gpu_pads_every_prefill_replayed_or_not(exports):
    """On a CUDA device a prefill runs at a multiple of 64 tokens whether it replays or not (so --cuda-graphs never
    changes the shapes its kernels compute at); the CPU runs it at its length. No CUDA is needed to ask."""
    folder = exports("tiny-qwen2-vl")
    manifest = ExportManifest.load(folder)
    prefill = next(name for name, graph in manifest.graphs.items() if graph.kind == "prefill")
    for replay in (False, True):
        sessions = Sessions(folder, manifest, RuntimeChoices(device=torch.device("cuda", 0), cuda_graphs=replay))
        assert [sessions.prefill_shape(prefill, length) for length in (70, 128, 129)] == [
            (prefill, n) for n in (128, 128, 192)
        ]
    cpu = Sessions(folder, manifest, RuntimeChoices())
    assert [cpu.prefill_shape(prefill, length) for length in (70, 128, 129)] == [(prefill, n) for n in (70, 128, 129)]


@pytest.mark.slow
def test_replacing_the_kv_cache_releases_the_graphs_captured_on_it(exports):
    """A decode graph captured on a KV cache holds its buffers: when a batch of another size replaces the cache, the
    graphs captured on it go with it (a weak reference to its buffer dies), and a later batch of the first size
    captures anew and still generates what it generates plainly."""
    import gc
    import weakref

    folder = exports("tiny-qwen2-vl")
    image = synthetic_image(224, 224, 4)
    prompts = [PROMPT, "Describe the colours."]
    expected = plain_tokens(folder, [image, image], prompts, 6)
    pipeline = replaying_pipeline(folder)  # as on a GPU
    pair = pipeline.prepare([image, image], prompts)
    pipeline.greedy(pair, 6)
    decode = pipeline.sessions.opened()["decode"].replayer
    old_buffer = weakref.ref(pipeline.sessions.kv_cache(2).buffers[0][0])
    bound_to_old = len(decode.captured)
    assert bound_to_old >= 1
    pipeline.greedy(pipeline.prepare([image], [PROMPT]), 6)  # batch 1: a new cache
    gc.collect()
    assert old_buffer() is None  # freed: no captured graph holds it
    assert len(decode.captured) == 1  # the batch-1 step's graph only
    tokens, _, _ = pipeline.greedy(pair, 6)  # batch 2 again: captured anew on its new cache
    np.testing.assert_array_equal(tokens, expected)


@pytest.mark.slow
@pytest.mark.parametrize("aliased", [True, False], ids=["in-place", "alternating-sets"])
def test_a_replayed_decode_step_copies_no_kv_cache_bytes(exports, aliased):
    """The KV caches, and the step's embeddings and logits the cache owns beside them, are bound as they are, never
    copied into the replayer's buffers: in place (ONNX Runtime, TensorRT's tensor-scatter form), and in the two
    alternating sets of TensorRT 10.3's scatter form, which are two captured graphs (one per set) with the same tokens
    as a plain run; a later request's running batch binds the same buffers."""
    folder = exports("tiny-qwen2-vl")
    image = synthetic_image(224, 224, 4)
    expected = plain_tokens(folder, [image], [PROMPT], 8)
    pipeline = replaying_pipeline(folder)  # as on a GPU
    pipeline.sessions.kv_aliased = aliased
    tokens, _, _ = pipeline.greedy(pipeline.prepare([image], [PROMPT]), 8)
    np.testing.assert_array_equal(tokens, expected)
    decode = pipeline.sessions.opened()["decode"].replayer
    assert pipeline.sessions.kv_cache(1).sets[-1] is not pipeline.sessions.kv_cache(1).sets[0] or aliased
    copied = {name for name, count in decode.copied_bytes.items() if count}
    # what is left to copy: the small per-row tensors (positions, write indices, the window's length)
    assert copied == {"position_ids", "kv_write_index", "attention_window"}
    assert len(decode.captured) == (1 if aliased else 2) and decode.replays == 7
    # a second request (a new running batch) binds the same buffers, which the cache owns: no new capture
    again, _, _ = pipeline.greedy(pipeline.prepare([image], [PROMPT]), 8)
    np.testing.assert_array_equal(again, expected)
    assert len(decode.captured) == (1 if aliased else 2) and decode.replays == 14


@pytest.mark.slow
def test_load_captures_the_planned_shapes_and_a_request_of_them_captures_nothing_new(exports):
    """Capture at load (``Pipeline.load(capture_rows=...)``), as on a GPU: the captures equal the planned shapes of the
    request's graphs up to the batch, a whole request then replays without capturing, and gives the plain tokens; a
    budget leaves the dearest shapes for first use."""
    from luvc.engines.static_shapes import StaticShapes

    folder = exports("tiny-qwen2-vl")
    image = synthetic_image(224, 224, 4)
    prompts = [PROMPT, "Describe the colours."]
    expected = plain_tokens(folder, [image, image], prompts, 8)

    pipeline = replaying_pipeline(folder)  # as on a GPU
    prepared = pipeline.prepare([image, image], prompts)
    pipeline.load(prepared.bucket, capture_rows=2, capture_budget_mib=1024)
    shapes = StaticShapes.of(pipeline.manifest)
    graphs = [name for name in pipeline.request_graphs(prepared.bucket) if name in pipeline.sessions.opened()]
    planned = sum(
        binding["batch"] <= 2
        for name in graphs
        if shapes[name] in shapes.replayed
        for binding in shapes[name].bindings()
    )
    report = pipeline.capture_report
    assert report.shapes == planned and report.left == 0 and report.buffer_bytes > 0
    _, captured, _, _ = pipeline.sessions.replay_counts()
    assert captured == planned
    tokens, _, _ = pipeline.greedy(prepared, 8)
    np.testing.assert_array_equal(tokens, expected)
    assert pipeline.sessions.replay_counts()[1] == captured  # nothing captured during the request

    bounded = replaying_pipeline(folder)  # as on a GPU
    bounded.load(prepared.bucket, capture_rows=2, capture_budget_mib=1)
    report = bounded.capture_report
    assert report.left > 0 and report.buffer_bytes <= 1 << 20 and report.shapes + report.left == planned
    tokens, _, _ = bounded.greedy(bounded.prepare([image, image], prompts), 8)
    np.testing.assert_array_equal(tokens, expected)
