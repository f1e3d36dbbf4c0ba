"""Weights held once per pipeline on ONNX Runtime's CPU EP: shared views of ``weights.data``, fp16 graphs computing in
float32 with each weight converted once, and the same results as ONNX Runtime's own handling."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from luvc.export.exporter import export_model
from luvc.export.manifest import external_tensors
from luvc.export.profile import ExportProfile
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.runtime.float32_graph import IN_FLOAT32, float32_compute
from luvc.runtime.pipeline import GenerationOptions, Pipeline
from tests.export.passes.graphs import small_model, value

PROMPT = "What is in this picture?"


@pytest.fixture(scope="module", params=["tiny-qwen2.5-vl", "tiny-llava"])
def fp16_external_export(request, tmp_path_factory):
    """A tiny fp16 export whose weights are all in ``weights.data`` (LLaVA's CLIP patch embedding is a Conv, whose
    weight ONNX Runtime reads from the graph itself)."""
    profile = ExportProfile(image_sizes=((224, 224),), precision="fp16", external_data="always")
    out = tmp_path_factory.mktemp("weights") / f"{request.param}-fp16-external"
    return export_model(load_model(request.param), out, profile, show_progress=False)


def _distinct_external_tensors(folder) -> dict[tuple[int, int], int]:
    """(offset, length) -> data type of every external tensor the export's graphs reference."""
    found = {}
    for path in sorted(folder.glob("*.onnx")):
        for tensor in onnx.load(str(path), load_external_data=False).graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                info = {entry.key: entry.value for entry in tensor.external_data}
                found[(int(info["offset"]), int(info["length"]))] = tensor.data_type
    return found


def _file_mappings(path) -> list[tuple[int, int]]:
    """Address ranges where this process maps ``path`` (Linux ``/proc/self/maps``)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].strip() == str(path.resolve()):
            start, end = (int(part, 16) for part in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def _shared_pointers(session) -> set[int]:
    return {value.data_ptr() for value in session.opened.shared_values}


def test_prefill_and_decode_use_one_copy_of_a_float32_export(exports):
    folder = exports("tiny-llava")  # fp32, weights in weights.data
    pipeline = Pipeline(folder)
    generation = pipeline.generate(synthetic_image(224, 224, 1), PROMPT, GenerationOptions(2))
    assert generation.tokens.shape == (1, 2)
    prefill = next(s for n, s in pipeline.sessions.opened().items() if n.startswith("prefill"))
    decode = pipeline.sessions.opened()["decode"]
    shared = _shared_pointers(prefill) & _shared_pointers(decode)
    assert len(shared) >= 4  # every decoder weight and the LM head
    mapped = _file_mappings(folder / "weights.data")
    assert all(any(start <= pointer < end for start, end in mapped) for pointer in shared)  # the file, not copies
    assert pipeline.sessions.weights.converted_bytes == 0
    assert pipeline.sessions.weights.mapped_bytes == sum(length for _, length in _distinct_external_tensors(folder))


@pytest.mark.slow
def test_fp16_export_converts_each_weight_once_and_matches_onnx_runtime(fp16_external_export):
    image = synthetic_image(224, 224, 5)
    shared = Pipeline(fp16_external_export)
    prepared = shared.prepare([image], [PROMPT])
    tokens, logits, _ = shared.greedy(prepared, 4)
    distinct = _distinct_external_tensors(fp16_external_export)
    half = sum(length for (_, length), kind in distinct.items() if kind == onnx.TensorProto.FLOAT16)
    # the weights; the rest are integer constants and the SPU's float32 (n, n) residual projections, which at tiny
    # widths weigh a quarter of the model
    assert half > 0.6 * sum(length for _, length in distinct)
    assert shared.sessions.weights.converted_bytes == 2 * half  # float32, once each
    assert shared.sessions.weights.mapped_bytes == sum(length for _, length in distinct) - half  # the rest: file views
    shared_values = {
        value.data_ptr() for session in shared.sessions.opened().values() for value in session.opened.shared_values
    }
    # shared, not inlined: every tensor not converted (integer constants), and every converted one of 1 MiB or more
    # (ONNX Runtime's fusions read smaller float ones from the graph itself, so those go inline converted)
    expected = [key for key, kind in distinct.items() if kind != onnx.TensorProto.FLOAT16 or key[1] >= 1 << 20]
    assert len(shared_values) == len(expected) >= 1

    native = Pipeline(fp16_external_export)
    native.sessions.weights = None  # ONNX Runtime reads each graph's own fp16 weights
    expected_tokens, expected_logits, _ = native.greedy(prepared, 4)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_allclose(logits, expected_logits, atol=2e-3, rtol=0)


@pytest.mark.slow
def test_float32_compute_keeps_the_in_place_cache_update_float16(fp16_external_export):
    model = onnx.load(str(fp16_external_export / "decode.onnx"), load_external_data=False)
    rewritten = float32_compute(model)
    float16 = onnx.TensorProto.FLOAT16
    assert [(v.name, v.type.tensor_type.elem_type) for v in rewritten.graph.input] == [
        (v.name, v.type.tensor_type.elem_type) for v in model.graph.input
    ]
    assert [(v.name, v.type.tensor_type.elem_type) for v in rewritten.graph.output] == [
        (v.name, v.type.tensor_type.elem_type) for v in model.graph.output
    ]
    scatters = [node for node in rewritten.graph.node if node.op_type == "TensorScatter"]
    assert scatters
    inputs = {value.name for value in rewritten.graph.input}
    outputs = {value.name for value in rewritten.graph.output}
    for node in scatters:  # reads the fed cache and writes the returned one: the runtime's aliasing still holds
        assert node.input[0] in inputs and node.output[0] in outputs
    inferred = onnx.shape_inference.infer_shapes(rewritten, strict_mode=True)
    types = {value.name: value.type.tensor_type.elem_type for value in inferred.graph.value_info}
    float16_inside = sorted(name for name, kind in types.items() if kind == float16)
    # the only float16 values inside: what the cache updates write, cast down just before them
    scatter_updates = {node.input[1] for node in scatters}
    assert set(float16_inside) == scatter_updates
    assert all(tensor.data_type != float16 for tensor in rewritten.graph.initializer)


def test_float16_rounding_rounds_each_value_as_float16_arithmetic_does():
    """``y = ((x + 1000) - 1000)^2`` in float16: float16 holds only halves near 1000, so float16 arithmetic (PyTorch's,
    parity's reference) quantizes ``x`` to halves, and float32 arithmetic gives ``x`` back. Parity's float16
    arithmetic on the CPU (``float16_rounding``) must round as the reference does, from float32 weights converted
    once."""
    import onnxruntime as ort

    float16 = onnx.TensorProto.FLOAT16
    offset = onnx.numpy_helper.from_array(np.array([1000.0], np.float16), "offset")
    nodes = [
        onnx.helper.make_node("Add", ["x", "offset"], ["shifted"]),
        onnx.helper.make_node("Sub", ["shifted", "offset"], ["back"]),
        onnx.helper.make_node("Mul", ["back", "back"], ["y"]),
    ]
    model = small_model(nodes, [value("x", [64], float16)], [value("y", [64], float16)], [offset])
    x = (np.random.default_rng(0).random(64) * 4).astype(np.float16)

    def run(graph):
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    half = torch.from_numpy(x)
    reference = ((half + 1000) - 1000) ** 2  # float16 tensors: each operation's result rounded to float16
    assert (reference.float() % 0.25 == 0).all()  # the premise: halves, squared
    np.testing.assert_array_equal(run(float32_compute(model, float16_rounding=True)), reference.numpy())
    assert not np.array_equal(run(float32_compute(model)), reference.numpy())  # float32 arithmetic keeps x


def _matmul_graph(weight_shape: tuple[int, int]) -> bytes:
    """``y = x @ w`` with ``w`` an initializer of zeros, to be replaced by a shared one."""
    nodes = [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])]
    inputs, outputs = [value("x", [1, weight_shape[0]])], [value("y", [1, weight_shape[1]])]
    zeros = onnx.numpy_helper.from_array(np.zeros(weight_shape, np.float32), "w")
    return small_model(nodes, inputs, outputs, [zeros]).SerializeToString()


def test_a_borrowed_device_tensor_is_a_shared_initializer_without_a_copy():
    """What the GPU path hands ONNX Runtime (a torch tensor lent through DLPack) is a buffer ONNX Runtime does not
    own, so ``add_initializer`` takes it; a value ONNX Runtime allocated itself (as ``ortvalue_from_numpy`` does on a
    GPU) is refused with the error every real export met on ONNX Runtime CUDA."""
    ort = pytest.importorskip("onnxruntime")
    import torch

    from luvc.runtime.weights import borrowed_ort_value

    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    value = borrowed_ort_value(weight)
    assert value.data_ptr() == weight.data_ptr()
    options = ort.SessionOptions()
    options.add_initializer("w", value)
    session = ort.InferenceSession(_matmul_graph((3, 4)), options, providers=["CPUExecutionProvider"])
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x @ weight.numpy())

    owned = ort.OrtValue.ortvalue_from_shape_and_type([3, 4], np.float32, "cpu", 0)
    with pytest.raises(Exception, match="must be owned by the user"):
        ort.SessionOptions().add_initializer("w", owned)


def test_a_large_float16_table_that_constant_folding_reads_runs_in_float32(tmp_path):
    """A float16 weight over 1 MiB looked up at constant positions (CLIP's position table at real widths, 1.2 MB): ONNX
    Runtime's constant folding reads it from the graph, so the float32 session must carry the converted table inline.
    Given as a shared initializer only, the graph still said float32 while its file held float16 bytes, and the session
    failed ("external data size mismatch"); LLaVA-1.5 at real widths met this."""
    ort = pytest.importorskip("onnxruntime")
    from luvc.runtime.weights import MappedWeights

    table = np.random.default_rng(0).standard_normal((600, 1024)).astype(np.float16)
    model = small_model(
        [
            onnx.helper.make_node("Gather", ["table", "positions"], ["rows"]),
            onnx.helper.make_node("Add", ["rows", "x"], ["y"]),
        ],
        [value("x", [2, 1024], onnx.TensorProto.FLOAT16)],
        [value("y", [2, 1024], onnx.TensorProto.FLOAT16)],
        [onnx.numpy_helper.from_array(table, "table"), onnx.numpy_helper.from_array(np.array([3, 7]), "positions")],
    )
    onnx.save_model(model, tmp_path / "g.onnx", save_as_external_data=True, location="weights.data", size_threshold=0)
    weights = MappedWeights(tmp_path, IN_FLOAT32)
    options = ort.SessionOptions()
    serialized, values = weights.session_model(onnx.load(tmp_path / "g.onnx", load_external_data=False), options)
    session = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    x = np.ones((2, 1024), np.float16)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], table[[3, 7]].astype(np.float32) + 1, rtol=1e-3)


@pytest.mark.slow
def test_a_second_start_maps_the_float32_weights_the_first_converted(fp16_external_export, tmp_path, monkeypatch):
    """luvc.cache: the first start converts each float16 weight and keeps it; the next maps those files (pages of the
    file cache, not copies) and computes the same logits; with the cache off each start converts."""
    from luvc import cache

    monkeypatch.setenv(cache.ENV, str(tmp_path / "cache"))
    cache.cache_root.cache_clear()
    half = sum(
        length
        for (_, length), kind in _distinct_external_tensors(fp16_external_export).items()
        if kind == onnx.TensorProto.FLOAT16
    )
    prepared = Pipeline(fp16_external_export).prepare([synthetic_image(224, 224, 5)], [PROMPT])
    try:
        first = Pipeline(fp16_external_export)
        tokens, logits, _ = first.greedy(prepared, 4)
        assert (first.sessions.weights.converted_bytes, first.sessions.weights.cached_bytes) == (2 * half, 0)

        second = Pipeline(fp16_external_export)
        again, again_logits, _ = second.greedy(prepared, 4)
        assert second.sessions.weights.cached_bytes == second.sessions.weights.converted_bytes == 2 * half
        np.testing.assert_array_equal(again, tokens)
        np.testing.assert_array_equal(again_logits, logits)
        # every float16 weight, as the sessions were given it (shared or inline), is a view of a file the first made
        kept = {str(path) for path in (tmp_path / "cache" / "float32").rglob("*.f32")}
        halves = [
            tensor
            for path in fp16_external_export.glob("*.onnx")
            for tensor in external_tensors(onnx.load(str(path), load_external_data=False))
            if tensor.data_type == onnx.TensorProto.FLOAT16
        ]
        arrays = [second.sessions.weights.array(tensor) for tensor in halves]
        assert arrays and all(isinstance(array, np.memmap) and str(array.filename) in kept for array in arrays)
        assert len(kept) == len({(tensor.offset, tensor.length) for tensor in halves})

        monkeypatch.setenv(cache.ENV, "off")
        cache.cache_root.cache_clear()
        off = Pipeline(fp16_external_export)
        off_tokens, off_logits, _ = off.greedy(prepared, 4)
        assert (off.sessions.weights.converted_bytes, off.sessions.weights.cached_bytes) == (2 * half, 0)
        np.testing.assert_array_equal(off_logits, logits)
    finally:
        cache.cache_root.cache_clear()


def test_fp8_weights_are_handed_over_as_their_bits(tmp_path):
    """An FP8 export's weights in ``weights.data`` are float8 ml_dtypes arrays, which neither ONNX Runtime's
    ``ortvalue_from_numpy`` nor ``torch.from_numpy`` takes: the ONNX Runtime value and the torch tensor carry the
    file's bytes under the float8 type."""
    import ml_dtypes
    import torch

    from luvc.runtime.weights import MappedWeights

    values = np.array([0.5, -1.0, 2.0, 448.0], dtype=np.float32)  # each exact in E4M3
    stored = values.astype(ml_dtypes.float8_e4m3fn).tobytes()
    (tmp_path / "weights.data").write_bytes(stored)
    tensor = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT8E4M3FN, [4], stored, raw=True)
    onnx.external_data_helper.set_external_data(tensor, "weights.data", offset=0, length=len(stored))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], [tensor]))
    (external,) = external_tensors(model)
    weights = MappedWeights(tmp_path)
    value = weights.ort_value(external)
    assert value.data_type() == "tensor(float8e4m3fn)" and value.shape() == [4]
    device = weights.device_tensor(external)
    assert device.dtype == torch.float8_e4m3fn
    np.testing.assert_array_equal(device.float().numpy(), values)


def _resident_bytes(path) -> int:
    """Bytes of ``path`` resident in this process's mappings of it (Linux ``/proc/self/smaps``)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):  # a mapping's header
            inside = len(fields) == 6 and fields[5] == str(path.resolve())
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


def test_dropping_the_resident_pages_keeps_the_values(tmp_path):
    from luvc.runtime.weights import MappedWeights

    values = np.arange(4 << 20, dtype=np.float32)  # 16 MiB
    (tmp_path / "weights.data").write_bytes(values.tobytes())
    tensor = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [values.size], values.tobytes(), raw=True)
    onnx.external_data_helper.set_external_data(tensor, "weights.data", offset=0, length=values.nbytes)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    (external,) = external_tensors(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], [tensor])))
    weights = MappedWeights(tmp_path)
    array = weights.array(external)
    assert float(array.sum(dtype=np.float64)) == float(values.sum(dtype=np.float64))  # every page read
    assert _resident_bytes(tmp_path / "weights.data") >= values.nbytes
    weights.drop_resident_pages()
    assert _resident_bytes(tmp_path / "weights.data") < values.nbytes // 16
    np.testing.assert_array_equal(array, values)  # read back from the page cache


@pytest.mark.slow  # calibrates an export
def test_a_quantized_session_leaves_no_page_of_the_weights_file_resident(exports, tmp_path):
    from luvc.calibration import calibrate_export

    folder = calibrate_export(exports("tiny-llava"), tmp_path / "int8", precision="int8", show_progress=False)
    pipeline = Pipeline(folder)  # tiny-llava's export keeps its weights in weights.data
    try:
        generation = pipeline.generate(synthetic_image(224, 224, 1), PROMPT, GenerationOptions(2))
        assert generation.tokens.shape == (1, 2)
        size = (folder / "weights.data").stat().st_size
        # packed by every quantized session: only what a run reads again comes back (the embedding rows, norms, and
        # the products kept in float, which ONNX Runtime reads unpacked: overridable_float_weights)
        floats = {
            tensor.name: tensor.length
            for name in ("decode", next(iter(pipeline.manifest.buckets.values())).prefill)
            for tensor in external_tensors(onnx.load(str(folder / f"{name}.onnx"), load_external_data=False))
            if tensor.data_type == onnx.TensorProto.FLOAT and len(tensor.shape) == 2
        }
        unpacked = sum(floats.values())
        assert unpacked < size // 2
        assert _resident_bytes(folder / "weights.data") < size // 4 + unpacked
    finally:
        pipeline.release()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["random", "zeroed"])
def test_a_damaged_cache_entry_never_changes_an_answer(fp16_external_export, tmp_path, monkeypatch, capsys, damage):
    """Issue 77: every float32 conversion in the cache overwritten with random bytes of its size (or one zeroed) made
    `run` answer garbage; now each damaged entry is dropped, said in one line, converted again, and the answer is the
    one a clean start gives."""
    from luvc import cache

    monkeypatch.setenv(cache.ENV, str(tmp_path / "cache"))
    cache.cache_root.cache_clear()
    cache._say_once.cache_clear()
    prepared = Pipeline(fp16_external_export).prepare([synthetic_image(224, 224, 5)], [PROMPT])
    try:
        tokens, logits, _ = Pipeline(fp16_external_export).greedy(prepared, 4)
        kept = sorted((tmp_path / "cache" / "float32").rglob("*.f32"))
        damaged = kept if damage == "random" else [max(kept, key=lambda path: path.stat().st_size)]
        generator = np.random.default_rng(0)
        for path in damaged:
            size = path.stat().st_size
            path.write_bytes(generator.bytes(size) if damage == "random" else bytes(size))
        capsys.readouterr()
        again = Pipeline(fp16_external_export)
        again_tokens, again_logits, _ = again.greedy(prepared, 4)
        np.testing.assert_array_equal(again_tokens, tokens)
        np.testing.assert_array_equal(again_logits, logits)
        warnings = [line for line in capsys.readouterr().err.splitlines() if "damaged entries" in line]
        assert len(warnings) == 1, warnings
        assert again.sessions.weights.cached_bytes < again.sessions.weights.converted_bytes
        # rebuilt: the next start maps every entry again, unchanged
        third = Pipeline(fp16_external_export)
        np.testing.assert_array_equal(third.greedy(prepared, 4)[1], logits)
        assert third.sessions.weights.cached_bytes == third.sessions.weights.converted_bytes
    finally:
        cache.cache_root.cache_clear()
        cache._say_once.cache_clear()


def test_a_quantized_sessions_float_products_are_left_unpacked_and_answer_the_same(exports, tmp_path):
    """ONNX Runtime prepacks a quantized graph's weights (its quantized kernels need it) and would pack a copy of the
    products kept in float too (the LM head, per session): a prefill graph declares those overridable, which it never
    packs, and the quantized ones not; the decode step keeps them packed; the logits are those of the graph as ONNX
    Runtime loads it by itself."""
    from luvc.calibration import calibrate_export
    from luvc.runtime.exposed import run_with_outputs

    folder = calibrate_export(exports("tiny-llava"), tmp_path / "int8", precision="int8", show_progress=False)
    pipeline = Pipeline(folder)
    try:
        prepared = pipeline.prepare([synthetic_image(224, 224, 1)], [PROMPT])
        request = pipeline.request(prepared, GenerationOptions(1, stop_token_ids=()))
        list(request)
        graph = onnx.load(str(folder / f"{prepared.bucket.prefill}.onnx"), load_external_data=False).graph
        initializers = {tensor.name: tensor.data_type for tensor in graph.initializer}
        products = [node.input[1] for node in graph.node if node.op_type in ("MatMul", "Gemm")]
        float_weights = {name for name in products if initializers.get(name) == onnx.TensorProto.FLOAT}
        assert "lm_head.weight" in float_weights
        session = pipeline.sessions[prepared.bucket.prefill].live
        assert {value.name for value in session.get_overridable_initializers()} == float_weights
        assert not pipeline.sessions["decode"].live.get_overridable_initializers()
        feeds = {name: tensor.numpy() for name, tensor in request.prefill_feeds.items()}
        alone = run_with_outputs(folder / f"{prepared.bucket.prefill}.onnx", ["logits"], feeds)["logits"]
        np.testing.assert_allclose(request.prefill_outputs["logits"].numpy(), alone, rtol=1e-4, atol=1e-4)
    finally:
        pipeline.release()
