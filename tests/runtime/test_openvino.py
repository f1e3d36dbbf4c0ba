"""The OpenVINO backend on real exports of every tiny family: the same tokens as ONNX Runtime, the KV cache written in
place, the TensorScatter conversion against ONNX's own definition, bf16 products on the kernels that make them fast."""

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from luvc.errors import LuvcError
from luvc.parity.tolerances import tolerances_for
from luvc.runtime.openvino_graph import (
    bfloat16_products,
    choose_precision,
    float16_decode_faster,
    float16_kernels,
    import_openvino,
    new_core,
)
from luvc.runtime.options import GenerationOptions
from luvc.runtime.pipeline import Pipeline
from luvc.samples import synthetic_image
from tests.conftest import EXPORT_MATRIX

pytest.importorskip("openvino")
ov = import_openvino()  # as the runtime imports it: OpenVINO's telemetry thread ended
PROMPT = "Describe the image."
STEPS = 6


def _has_bf16() -> bool:
    return choose_precision(ov.Core()).precision == "bf16"


needs_bf16 = pytest.mark.skipif(not _has_bf16(), reason="this CPU has no AMX or AVX-512 BF16: OpenVINO computes f32")
needs_f16 = pytest.mark.skipif(
    not (_has_bf16() and float16_kernels(ov.Core())),
    reason="this CPU has no AVX-512 FP16 or AMX-FP16: an fp16 export's decode step computes bf16 like the rest",
)


def _greedy(pipeline: Pipeline):
    prepared = pipeline.prepare([synthetic_image(224, 224, 3)], [PROMPT])
    tokens, logits, _ = pipeline.greedy(prepared, STEPS)
    pipeline.release()
    return tokens, logits


@pytest.mark.parametrize(
    ("family", "precision"),
    [*((family, "fp32") for family in EXPORT_MATRIX), ("tiny-qwen2-vl", "fp16")],
)
def test_openvino_f32_gives_onnx_runtimes_tokens_and_logits(family, precision, exports):
    folder = exports(family, precision)
    ort_tokens, ort_logits = _greedy(Pipeline(folder))
    tokens, logits = _greedy(Pipeline(folder, backend="openvino", openvino_precision="f32"))
    np.testing.assert_array_equal(tokens, ort_tokens)
    # every decode step read the cache the step before wrote in place: a wrong write shows in the next logits
    scale = np.abs(ort_logits).max()
    assert np.abs(logits - ort_logits).max() <= (1e-4 if precision == "fp32" else 2e-3) * scale


@needs_bf16
def test_openvino_bf16_stays_within_bf16_rounding_of_onnx_runtime(exports):
    """(Every family's bf16 run is judged by parity: tests/parity/test_checker.py.)"""
    folder = exports("tiny-qwen2-vl", "fp32")
    _, ort_logits = _greedy(Pipeline(folder))
    pipeline = Pipeline(folder, backend="openvino")
    assert pipeline.sessions.openvino.precision.precision == "bf16"
    _, logits = _greedy(pipeline)
    first = np.abs(logits[:, 0] - ort_logits[:, 0]).max() / np.abs(ort_logits[:, 0]).max()
    assert 1e-5 < first < 5e-2  # bf16 moved them (not f32), by its rounding (not a wrong graph)


@needs_f16
def test_an_fp16_exports_decode_step_computes_in_f16_and_gives_onnx_runtimes_tokens(exports):
    """Where the CPU has f16 kernels, the decode step of an fp16 export compiles under the f16 hint and every other
    graph under bf16, run's description says so, and the tokens are ONNX Runtime's (float32) within fp16's bound."""
    folder = exports("tiny-qwen2-vl", "fp16")
    ort_tokens, ort_logits = _greedy(Pipeline(folder))
    pipeline = Pipeline(folder, backend="openvino")
    prepared = pipeline.prepare([synthetic_image(224, 224, 3)], [PROMPT])
    tokens, logits, _ = pipeline.greedy(prepared, STEPS)
    hints = {
        name: session.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        for name, session in pipeline.sessions.opened().items()
    }
    described = pipeline.sessions.backend_description()
    pipeline.release()
    assert hints.pop("decode") == "f16" and set(hints.values()) == {"bf16"}, hints
    assert described.endswith("; decode: f16 products (fp16 weights, the CPU has f16 kernels)"), described
    np.testing.assert_array_equal(tokens, ort_tokens)
    assert np.abs(logits - ort_logits).max() <= tolerances_for("fp16").tensor_relative * np.abs(ort_logits).max()


def _tensor_scatter_model(axis: int, with_indices: bool) -> onnx.ModelProto:
    inputs = [
        helper.make_tensor_value_info("past", TensorProto.FLOAT, [2, 3, 7, 4]),
        helper.make_tensor_value_info("update", TensorProto.FLOAT, [2, 3, 2, 4]),
    ]
    names = ["past", "update"]
    if with_indices:
        inputs.append(helper.make_tensor_value_info("write_indices", TensorProto.INT64, [2]))
        names.append("write_indices")
    node = helper.make_node("TensorScatter", names, ["present"], axis=axis, mode="linear")
    output = helper.make_tensor_value_info("present", TensorProto.FLOAT, [2, 3, 7, 4])
    graph = helper.make_graph([node], "scatter", inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 24)])


@pytest.mark.parametrize(("axis", "with_indices"), [(2, True), (-2, True), (2, False)])
def test_tensor_scatter_converts_to_what_onnx_defines(tmp_path, axis, with_indices):
    path = tmp_path / "scatter.onnx"
    onnx.save(_tensor_scatter_model(axis, with_indices), str(path))
    rng = np.random.default_rng(0)
    feeds = {"past": rng.standard_normal((2, 3, 7, 4), np.float32), "update": rng.standard_normal((2, 3, 2, 4))}
    feeds["update"] = feeds["update"].astype(np.float32)
    writes = np.array([1, 5]) if with_indices else np.zeros(2, np.int64)
    if with_indices:
        feeds["write_indices"] = writes
    compiled = new_core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    present = compiled(feeds)[compiled.output(0)]
    expected = feeds["past"].copy()  # the pseudocode of ONNX's TensorScatter, mode linear
    for row in range(2):
        for step in range(2):
            expected[row, :, writes[row] + step] = feeds["update"][row, :, step]
    np.testing.assert_array_equal(present, expected)


def test_openvino_reads_the_decode_graph_only_through_the_conversion(exports):
    with pytest.raises(RuntimeError, match="TensorScatter"):
        ov.Core().read_model(str(exports("tiny-qwen2-vl", "fp32") / "decode.onnx"))
    assert new_core().read_model(str(exports("tiny-qwen2-vl", "fp32") / "decode.onnx")) is not None


@needs_bf16
def test_bf16_products_run_on_bf16_kernels_where_openvino_alone_keeps_f32(exports):
    """OpenVINO keeps every product upstream of SPU's ranking in f32; the rewrite makes each one bf16."""
    core = new_core()
    path = str(exports("tiny-qwen2-vl", "fp32") / "prefill_224x224.onnx")

    def precisions(rewrite: bool) -> collections.Counter:
        model = core.read_model(path)
        changed = bfloat16_products(model) if rewrite else 0
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
        kinds = collections.Counter()
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) == "FullyConnected":
                kinds[info["runtimePrecision"].astype(str)] += 1
        return kinds, changed

    alone, _ = precisions(False)
    rewritten, changed = precisions(True)
    assert alone["f32"] > 0  # what the rewrite is for
    assert changed >= 4 * 7 and rewritten == collections.Counter({"bf16": sum(alone.values())})


def test_openvino_refuses_a_gpu_device_and_names_the_fix(exports):
    with pytest.raises(LuvcError, match="OpenVINO backend runs on the CPU"):
        Pipeline(exports("tiny-qwen2-vl", "fp32"), backend="openvino", device="cuda:0")


def test_openvino_generates_text_only_prompts_through_the_lazily_compiled_text_prefill(exports):
    folder = exports("tiny-qwen2-vl", "fp32")
    pipeline = Pipeline(folder, backend="openvino", openvino_precision="f32").load()
    text_prefill = pipeline.manifest.text_prefill
    assert text_prefill not in pipeline.sessions.opened()  # compiled only when first needed
    options = GenerationOptions(4, stop_token_ids=())
    answer = pipeline.generate(None, ["Hi"], options)
    assert text_prefill in pipeline.sessions.opened()
    assert answer.texts == Pipeline(folder).generate(None, ["Hi"], options).texts


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    from luvc import cache

    monkeypatch.setenv(cache.ENV, str(tmp_path / "cache"))
    cache.cache_root.cache_clear()
    yield tmp_path / "cache"
    cache.cache_root.cache_clear()


def test_auto_measures_both_cpu_backends_once_and_a_later_start_reads_what_it_measured(exports, own_cache, monkeypatch):
    import torch

    from luvc.runtime import backend_choice, pipeline

    folder = exports("tiny-qwen2-vl", "fp32")
    timed = []
    original = pipeline.first_token_ms

    def counting(folder, manifest, backend):
        timed.append(backend)
        return original(folder, manifest, backend)

    monkeypatch.setattr(pipeline, "first_token_ms", counting)
    chosen = Pipeline(folder, backend="auto")
    assert sorted(timed) == ["openvino", "ort"] and chosen.backend in ("ort", "openvino")
    assert chosen.backend_choice.reason.startswith(f"first token {chosen.backend} ")  # the faster one first
    assert chosen.backend_choice.reason.endswith("measured now")
    assert "chosen by --backend auto" in chosen.backend_description()
    again = Pipeline(folder, backend="auto")  # read from the cache: nothing timed again
    assert len(timed) == 2 and again.backend == chosen.backend and "measured 20" in again.backend_choice.reason
    # a record naming the other backend is what a later start follows (the measurement is the cache's)
    (record,) = (own_cache / "backends").glob("*.json")
    other = "ort" if chosen.backend == "openvino" else "openvino"
    record.write_text(record.read_text().replace(f'"backend": "{chosen.backend}"', f'"backend": "{other}"'))
    assert Pipeline(folder, backend="auto").backend == other
    record.write_text('{"backend": "openvino", "first_token_ms": [1], "when": 3}')  # damaged: measured again
    assert Pipeline(folder, backend="auto").backend_choice.reason.endswith("measured now") and len(timed) == 4
    from luvc import cache

    cache.clear_cache()  # `luvc-export cache --clear` forgets what was measured too
    assert not list((own_cache / "backends").glob("*.json"))
    # on a GPU nothing is measured: engines mean TensorRT, else ONNX Runtime's CUDA EP
    manifest = chosen.manifest
    assert backend_choice.choose_backend(manifest, torch.device("cuda", 0), True, None).backend == "trt"
    assert backend_choice.choose_backend(manifest, torch.device("cuda", 0), False, None).backend == "ort"


@pytest.mark.slow  # two fresh interpreters importing torch and OpenVINO: kept out of the fast tier's two minutes
def test_the_runtime_imports_openvino_without_leaving_its_telemetry_thread_behind():
    """A bare ``import openvino`` leaves a telemetry thread running, which stops the exporter from forking its graph
    workers in the same process; the runtime's import ends it (each in a fresh interpreter)."""
    import subprocess
    import sys

    threads = "from luvc.export.graph_workers import other_threads; print(other_threads())"
    bare = subprocess.run([sys.executable, "-c", f"import openvino; {threads}"], capture_output=True, text=True)
    if bare.stdout.strip() == "[]":  # telemetry off here (opted out, or no consent file): nothing to release
        pytest.skip("a bare `import openvino` starts no telemetry thread on this machine")
    runtime = "from luvc.runtime.openvino_graph import import_openvino; import_openvino()"
    released = subprocess.run([sys.executable, "-c", f"{runtime}; {threads}"], capture_output=True, text=True)
    assert released.stdout.strip() == "[]", released.stderr


def test_auto_runs_the_export_on_onnx_runtime_when_openvino_cannot_read_it(exports, own_cache):
    """(OpenVINO refuses INT4 blocks wider than a product's input, as in the tiny models' INT4 exports.)"""
    import torch

    from luvc.errors import critical
    from luvc.runtime.backend_choice import choose_backend

    def timed(backend: str) -> float:
        if backend == "openvino":
            critical("openvino:decode: OpenVINO could not read decode.onnx: DequantizeLinear-24; use --backend ort.")
        return 12.0

    manifest = Pipeline(exports("tiny-qwen2-vl", "fp32")).manifest
    chosen = choose_backend(manifest, torch.device("cpu"), False, timed)
    assert chosen.backend == "ort"
    assert chosen.reason == (
        "first token ort 12 ms, measured now; openvino refused: openvino:decode: OpenVINO could not read decode.onnx: "
        "DequantizeLinear-24; use --backend ort."
    )


def test_weight_only_products_quantize_their_activations_in_groups_of_256(tmp_path):
    """OpenVINO's CPU plugin runs a weight-only product on integer kernels with its activations quantized on the fly
    per group of input channels; the runtime compiles every graph with groups of 256 (its default, 32, decoded
    Qwen2-VL-2B's int8w widths a fifth slower), and the product still computes what its weights mean."""
    from luvc.runtime.openvino_runtime import DYNAMIC_QUANTIZATION_GROUP, OpenVinoRuntime

    rng = np.random.default_rng(0)
    inputs, outputs = 512, 64
    weight = rng.integers(-127, 128, (inputs, outputs), dtype=np.int8)
    scale = rng.uniform(0.001, 0.01, outputs).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["weight", "scale"], ["dequantized"], axis=1),
            helper.make_node("MatMul", ["x", "dequantized"], ["y"]),
        ],
        "weight_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, outputs])],
        [onnx.numpy_helper.from_array(weight, "weight"), onnx.numpy_helper.from_array(scale, "scale")],
    )
    path = tmp_path / "weight_only.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), path)
    compiled, _ = OpenVinoRuntime.create("f32").compile(path, "weight_only")
    assert DYNAMIC_QUANTIZATION_GROUP == 256
    assert int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == DYNAMIC_QUANTIZATION_GROUP
    x = rng.standard_normal((1, inputs)).astype(np.float32)
    expected = x @ (weight.astype(np.float32) * scale)
    got = compiled({"x": x})["y"]
    assert np.abs(got - expected).max() <= 0.02 * np.abs(expected).max()  # 8-bit activations: within 2% of the scale


class _ReadCounting:
    """A real OpenVINO core that counts the models read through it in Python."""

    def __init__(self, core) -> None:
        self.core, self.reads = core, 0

    def read_model(self, *args, **kwargs):
        self.reads += 1
        return self.core.read_model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.core, name)


def test_in_f32_a_graph_is_compiled_from_its_path_and_a_cached_one_is_imported_unread(exports, tmp_path):
    """Given the path, OpenVINO's cache keys the graph by path, size and time, and imports a cached compile without
    reading the graph or hashing its weights (given a read model, it hashes every weight at every start)."""
    from luvc import cache
    from luvc.runtime.openvino_runtime import OpenVinoRuntime

    path = exports("tiny-qwen2-vl", "fp32") / "decode.onnx"
    folder = tmp_path / "compiled"
    folder.mkdir()
    first = OpenVinoRuntime.create("f32", folder)
    first.core = _ReadCounting(first.core)
    first.compile(path, "decode")
    blobs = sorted(folder.glob(f"*/{cache.OPENVINO_BLOB}"))
    assert first.core.reads == 0 and len(blobs) == 1  # compiled and kept (in the graph's folder), never read in Python
    again = OpenVinoRuntime.create("f32", folder)  # a later start: a new core on the same cache
    compiled, entry = again.compile(path, "decode")
    assert entry == blobs[0].parent
    assert sorted(folder.glob(f"*/{cache.OPENVINO_BLOB}")) == blobs and compiled.inputs  # imported, not compiled anew
    assert Path(f"{blobs[0]}{cache.SEAL_SUFFIX}").is_file()  # sealed, as every blob is


def test_openvino_sessions_open_on_one_background_thread_one_compile_at_a_time(exports):
    import threading

    pipeline = Pipeline(exports("tiny-llava", "fp32"), backend="openvino")
    assert pipeline.sessions.opener.threads == 1  # compiles seal the cache's blobs as they end: one at a time
    graphs = pipeline.request_graphs(next(iter(pipeline.manifest.buckets.values())))
    pipeline.begin_loading(graphs)
    opening = [thread for thread in threading.enumerate() if thread.name.startswith("luvc-open")]
    assert len(opening) <= 1
    pipeline.load(next(iter(pipeline.manifest.buckets.values())))
    assert set(pipeline.sessions.opened()) == set(graphs)
    assert not any(thread.is_alive() for thread in opening)
    tokens, _ = _greedy(pipeline)
    expected, _ = _greedy(Pipeline(exports("tiny-llava", "fp32")))
    np.testing.assert_array_equal(tokens, expected)


def _resident_bytes_under(folder: Path) -> int:
    """Resident bytes of this process's mappings of files inside ``folder`` (``/proc/self/smaps``)."""
    prefix, resident, inside = str(folder.resolve()), 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):  # a mapping's header line
            inside = len(fields) >= 6 and fields[5].startswith(prefix)
        elif inside and fields[0] == "Rss:":
            resident += int(fields[1]) * 1024
    return resident


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc/self/smaps")
def test_a_cached_graphs_mapped_blob_leaves_resident_memory_after_its_first_run(exports, own_cache):
    """Imported from the start-up cache, a graph reads its weights from the mapped blob; after its first run they are
    the products' own copies, and the blob's pages are released: the answers stay the same."""
    folder = exports("tiny-qwen2-vl", "fp32")
    expected, expected_logits = _greedy(Pipeline(folder, backend="openvino", openvino_precision="f32"))  # fills it
    pipeline = Pipeline(folder, backend="openvino", openvino_precision="f32")
    prepared = pipeline.prepare([synthetic_image(224, 224, 3)], [PROMPT])
    pipeline.load(prepared.bucket)
    sessions = [pipeline.sessions.opened()[name] for name in pipeline.request_graphs(prepared.bucket)]
    imported = [session for session in sessions if session.blob_folder is not None]
    assert imported, "no graph was imported from the cache"
    blobs = {session.blob_folder: next(session.blob_folder.glob("*.blob")).stat().st_size for session in imported}
    assert sum(_resident_bytes_under(folder) for folder in blobs) >= sum(blobs.values())  # imported: read from the map
    tokens, logits, _ = pipeline.greedy(prepared, STEPS)
    resident = sum(_resident_bytes_under(folder) for folder in blobs)
    # all of them resident before the first run; after it, what a graph reads again at each run comes back (the
    # embedding table a gather reads; at these tiny widths some products read their weights unpacked): 14% measured
    assert resident < 0.5 * sum(blobs.values()), (resident, blobs)
    assert all(session.blob_folder is None for session in imported)
    np.testing.assert_array_equal(tokens, expected)
    np.testing.assert_array_equal(logits, expected_logits)


def test_release_mapped_drops_a_read_only_mappings_pages_and_keeps_its_bytes(tmp_path):
    from luvc.runtime.mapped_pages import mappings_under, release_mapped

    data = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8)
    path = tmp_path / "blob" / "weights.bin"
    path.parent.mkdir()
    data.tofile(path)
    mapped = np.memmap(path, mode="r")
    assert int(mapped.astype(np.int64).sum()) == int(data.astype(np.int64).sum())  # every page read
    written = np.memmap(tmp_path / "blob" / "scratch.bin", mode="w+", shape=(1 << 20,))
    written[:] = 7  # a writable mapping: never released
    assert _resident_bytes_under(path.parent) >= 9 << 20
    assert [m.writable for m in mappings_under(path.parent)].count(False) == 1
    assert release_mapped(path.parent) >= 8 << 20
    assert _resident_bytes_under(path.parent) <= (1 << 20) + (64 << 10)  # the writable one's pages, no more
    np.testing.assert_array_equal(mapped, data)  # read again from the file
    assert (written == 7).all()
    assert release_mapped(tmp_path / "elsewhere") == 0


def _product_graph(path: Path, weight: np.ndarray, rows: int, quantized_activation: bool = False) -> Path:
    """A MatMul of an activation of ``rows`` rows by ``weight`` (int8: per column, uint4: blocks of 32) behind a
    DequantizeLinear; with ``quantized_activation``, the activation behind a Q/DQ pair (an INT8 export's)."""
    inputs, outputs = weight.shape
    scale = np.full(outputs, 0.01, np.float32) if weight.dtype == np.int8 else np.full((1, outputs), 0.01, np.float32)
    attributes = {"axis": 1} if weight.dtype == np.int8 else {"axis": 0, "block_size": 32}
    packed = onnx.numpy_helper.from_array(weight, "weight")
    if weight.dtype != np.int8:
        packed = helper.make_tensor("weight", TensorProto.UINT4, weight.shape, weight.flatten().tolist())
    nodes = [helper.make_node("DequantizeLinear", ["weight", "scale"], ["dequantized"], **attributes)]
    activation = "x"
    if quantized_activation:
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
        ]
        activation = "xd"
    nodes.append(helper.make_node("MatMul", [activation, "dequantized"], ["y"]))
    initializers = [
        packed,
        onnx.numpy_helper.from_array(scale, "scale"),
        onnx.numpy_helper.from_array(np.array(0.1, np.float32), "x_scale"),
        onnx.numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "product",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, rows, outputs])],
        initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), path)
    return path


def test_weight_only_products_decide_where_integer_kernels_are_faster(tmp_path):
    """8-bit weight-only products run on integer kernels (the f32 hint) in every graph, INT4 ones in the decode step
    only (a prefill of INT4 weights was faster decompressed to bf16); a Q/DQ export's products are not weight-only."""
    from luvc.runtime.openvino_graph import integer_kernels_faster, weight_only_products

    rng = np.random.default_rng(0)
    core = new_core()
    int8 = core.read_model(_product_graph(tmp_path / "int8.onnx", rng.integers(-127, 128, (64, 16), np.int8), 8))
    int4 = core.read_model(_product_graph(tmp_path / "int4.onnx", rng.integers(0, 16, (64, 16), np.uint8), 8))
    qdq = _product_graph(
        tmp_path / "qdq.onnx", rng.integers(-127, 128, (64, 16), np.int8), 8, quantized_activation=True
    )
    assert weight_only_products(int8) == ["i8"] and weight_only_products(int4) == ["u4"]
    assert weight_only_products(core.read_model(qdq)) == []
    assert integer_kernels_faster(int8, decode_step=False) and integer_kernels_faster(int8, decode_step=True)
    assert not integer_kernels_faster(int4, decode_step=False) and integer_kernels_faster(int4, decode_step=True)
    float_weights = core.read_model(_float_product_graph(tmp_path / "f.onnx", np.float32))
    assert not integer_kernels_faster(float_weights, decode_step=True)


def _float_product_graph(path: Path, dtype: type) -> Path:
    """A MatMul of an activation by a constant weight, both of ``dtype``."""
    element = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    weight = np.random.default_rng(0).standard_normal((64, 16)).astype(dtype)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "float",
        [helper.make_tensor_value_info("x", element, [1, 1, 64])],
        [helper.make_tensor_value_info("y", element, [1, 1, 16])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), path)
    return path


def test_only_a_decode_step_of_float16_weights_is_chosen_for_f16(tmp_path):
    """f16 is chosen for a decode step whose products are all of float16 weights: not a prefill, not float32 weights,
    not weight-only INT8 ones; and never where the user asked for a precision."""
    core = new_core()
    f16 = core.read_model(_float_product_graph(tmp_path / "f16.onnx", np.float16))
    f32 = core.read_model(_float_product_graph(tmp_path / "f32.onnx", np.float32))
    int8 = core.read_model(_product_graph(tmp_path / "int8.onnx", np.ones((64, 16), np.int8), 1))
    assert float16_decode_faster(f16, decode_step=True)
    assert not float16_decode_faster(f16, decode_step=False)
    assert not float16_decode_faster(f32, decode_step=True)
    assert not float16_decode_faster(int8, decode_step=True)
    assert not choose_precision(core, "f32").float16_decode
    if _has_bf16():
        assert not choose_precision(core, "bf16").float16_decode
        assert choose_precision(core, "auto").float16_decode == float16_kernels(core)
