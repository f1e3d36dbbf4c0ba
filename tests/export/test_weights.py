"""One shared weights file per export: the LLM weights of prefill and decode are stored once, and every graph still
runs by path in ONNX Runtime with the same outputs as a graph whose weights are inline."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from luvc.export.exporter import export_model, graphs_use_weights_file, save_model
from luvc.export.manifest import ExportManifest, load_graph
from luvc.export.profile import ExportProfile
from luvc.export.weights import ALIGNMENT, WEIGHTS_FILE, SharedWeights
from luvc.models import load_model


def _tensor_bytes(model: onnx.ModelProto) -> dict[str, bytes]:
    return {init.name: onnx.numpy_helper.to_array(init).tobytes() for init in model.graph.initializer}


def _weight_bytes(model: onnx.ModelProto) -> dict[str, bytes]:
    """The floating-point initializers (weights; integer constants such as the decode graph's per-layer position
    ranges for its KV-cache masks are not)."""
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    return {
        init.name: onnx.numpy_helper.to_array(init).tobytes()
        for init in model.graph.initializer
        if init.data_type in floats
    }


def test_export_stores_shared_llm_weights_once(exports):
    folder = exports("tiny-llava")  # exported with external data "always"
    manifest = ExportManifest.load(folder)
    assert [f for f in manifest.files if f.endswith(".data")] == [WEIGHTS_FILE]
    assert all(graph.external_data == (WEIGHTS_FILE,) for graph in manifest.graphs.values())
    graphs = {name: load_graph(folder, name, manifest) for name in manifest.graphs}
    # what the graphs reference, counted per graph, against what the file holds
    distinct = {b for model in graphs.values() for b in _tensor_bytes(model).values() if len(b) >= 1024}
    stored = (folder / WEIGHTS_FILE).stat().st_size
    assert sum(len(b) for b in distinct) <= stored < sum(len(b) for b in distinct) + len(distinct) * ALIGNMENT
    prefill, decode = _weight_bytes(graphs["prefill_224x224"]), _weight_bytes(graphs["decode"])
    shared = set(prefill.values()) & set(decode.values())
    assert sum(len(b) for b in shared) > 0.9 * sum(len(b) for b in decode.values() if len(b) >= 1024)
    referenced = sum(len(b) for model in graphs.values() for b in _weight_bytes(model).values() if len(b) >= 1024)
    stored_weights = sum(
        len(b) for b in {b for m in graphs.values() for b in _weight_bytes(m).values() if len(b) >= 1024}
    )
    assert stored_weights < 0.75 * referenced  # without sharing the file would hold every graph's copy


def test_a_shared_graph_computes_what_the_inline_graph_computes(exports, tmp_path):
    source = exports("tiny-qwen2-vl")
    inline = load_graph(source, "decode")  # the qwen export keeps its weights inline
    weights = SharedWeights(tmp_path)
    files = save_model(load_graph(source, "decode"), tmp_path / "decode.onnx", True, weights)
    assert files == ["decode.onnx", WEIGHTS_FILE]
    again = save_model(load_graph(source, "decode"), tmp_path / "decode2.onnx", True, weights)
    assert again == ["decode2.onnx", WEIGHTS_FILE] and weights.written_bytes * 2 == weights.referenced_bytes
    rng = np.random.default_rng(0)
    feeds = {}
    for info in inline.graph.input:
        dims = [d.dim_value or 3 for d in info.type.tensor_type.shape.dim]
        if info.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            feeds[info.name] = np.arange(np.prod(dims), dtype=np.int64).reshape(dims) % 5
        elif info.type.tensor_type.elem_type == onnx.TensorProto.BOOL:  # the attention window
            feeds[info.name] = np.zeros(dims, dtype=bool)
        else:
            feeds[info.name] = rng.standard_normal(dims).astype(np.float32)
    expected = ort.InferenceSession(inline.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for name in ("decode.onnx", "decode2.onnx"):
        session = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        for actual, wanted in zip(session.run(None, feeds), expected):
            np.testing.assert_array_equal(actual, wanted)


def test_small_graphs_keep_their_weights_inline(exports, tmp_path):
    weights = SharedWeights(tmp_path)
    files = save_model(load_graph(exports("tiny-qwen2-vl"), "embed"), tmp_path / "embed.onnx", False, weights)
    assert files == ["embed.onnx"] and not (tmp_path / WEIGHTS_FILE).exists()


@pytest.mark.parametrize(
    ("setting", "weight_bytes", "external"),
    [
        ("auto", 2 << 30, True),
        ("auto", 300 << 20, True),
        ("auto", 100 << 20, False),
        ("always", 0, True),
        ("never", 8 << 30, False),
    ],
)
def test_one_external_data_answer_per_export_from_the_model_size(setting, weight_bytes, external):
    assert graphs_use_weights_file(setting, weight_bytes) is external


@pytest.mark.slow  # it makes an export of its own
def test_a_tied_lm_head_and_the_embedding_table_are_stored_once(tmp_path, monkeypatch, exports):
    adapter = load_model("tiny-qwen2-vl")
    adapter.model.lm_head.weight = adapter.model.get_input_embeddings().weight  # tied, as Qwen2-VL-2B's are
    # "auto" with a threshold between the embed graph's weights (35 kB) and the model's, as a 2B model sits between
    # its 467 MB embedding table and 1 GiB: the small embed graph must go to weights.data with the others
    monkeypatch.setattr("luvc.export.exporter.AUTO_EXTERNAL_BYTES", 100_000)
    # and weights streamed from the tracing scratch file tensor by tensor, as a real-size model's are
    monkeypatch.setattr("luvc.export.convert.INLINE_BYTES", 1024)
    profile = ExportProfile(image_sizes=((224, 224),), external_data="auto")
    export = export_model(adapter, tmp_path / "export", profile, show_progress=False)
    table = adapter.model.get_input_embeddings().weight.detach().numpy()

    def locations(graph: str) -> set[tuple[str, str]]:
        model = onnx.load(str(export / f"{graph}.onnx"), load_external_data=False)
        found = set()
        for tensor in model.graph.initializer:
            if tuple(tensor.dims) == table.shape:
                info = {entry.key: entry.value for entry in tensor.external_data}
                found.add((info["offset"], info["length"]))
        return found

    inline = exports("tiny-qwen2-vl")  # the same weights, untied, every tensor in its graph
    for graph in ExportManifest.load(export).graphs:  # every streamed tensor reads back as traced
        shared = {t.name: onnx.numpy_helper.to_array(t) for t in load_graph(export, graph).graph.initializer}
        for tensor in load_graph(inline, graph).graph.initializer:
            if tensor.name in shared and tensor.name != "lm_head.weight":  # untied in the inline export
                np.testing.assert_array_equal(shared[tensor.name], onnx.numpy_helper.to_array(tensor), tensor.name)
    embed, decode = locations("embed"), locations("decode")
    assert len(embed) == 1 and embed == decode  # the LM head reads the embedding table's bytes
    with open(export / WEIGHTS_FILE, "rb") as file:
        ((offset, length),) = embed
        file.seek(int(offset))
        np.testing.assert_array_equal(np.frombuffer(file.read(int(length)), np.float32).reshape(table.shape), table)


def test_streamed_tensors_after_a_duplicate_land_where_their_references_point(tmp_path):
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    scratch.mkdir()
    out.mkdir()
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 7)).astype(np.float32), rng.standard_normal((500, 3)).astype(np.float32)
    tensors = [onnx.numpy_helper.from_array(v, n) for v, n in ((a, "a"), (a, "a_again"), (b, "b"), (a, "a_third"))]
    graph = onnx.helper.make_graph([], "g", [], [], initializer=tensors)
    model = onnx.helper.make_model(graph)
    onnx.save_model(model, str(scratch / "g.onnx"), save_as_external_data=True, size_threshold=0)
    model = onnx.load(str(scratch / "g.onnx"), load_external_data=False)
    weights = SharedWeights(out)
    weights.externalize(model, scratch)
    onnx.save_model(model, str(out / "g.onnx"))
    loaded = {t.name: onnx.numpy_helper.to_array(t, str(out)) for t in onnx.load(str(out / "g.onnx")).graph.initializer}
    for name, expected in (("a", a), ("a_again", a), ("b", b), ("a_third", a)):
        np.testing.assert_array_equal(loaded[name], expected, name)
    assert (out / WEIGHTS_FILE).stat().st_size == -(-a.nbytes // ALIGNMENT) * ALIGNMENT + b.nbytes


def _ir_model(arrays: dict[str, np.ndarray]):
    import onnx_ir as ir

    graph = ir.Graph(
        [], [], nodes=[], initializers=[ir.Value(name=n, const_value=ir.Tensor(a)) for n, a in arrays.items()]
    )
    return ir.Model(graph, ir_version=10)


def test_streamed_views_of_stable_memory_are_stored_once_and_read_back_as_traced(tmp_path):
    """A folded transpose of a parameter comes back from every graph as a strided view of the parameter's memory:
    stored once, placed by address in later graphs, and read back as the transpose; views of other memory are
    placed by their bytes."""
    import torch

    from luvc.export.weights import StableMemory

    parameter = torch.randn(64, 48)
    stable = StableMemory([parameter])
    weights = SharedWeights(tmp_path)
    transposed = parameter.numpy().T  # what a graph holds: a view, not a copy
    elsewhere = np.ascontiguousarray(transposed)  # the same bytes in memory the export does not keep
    for name in ("a", "b"):
        model = onnx.helper.make_model(onnx.helper.make_graph([], name, [], []))
        proto = weights.stream(_ir_model({"w": transposed, "copy": elsewhere}), 1024, stable)
        model.graph.initializer.extend(proto.graph.initializer)
        onnx.save_model(model, str(tmp_path / f"{name}.onnx"))
    assert len(weights.views) == 1 and len(weights.offsets) == 1  # one view known by address, one set of bytes
    assert weights.referenced_bytes == 4 * transposed.nbytes and weights.written_bytes == transposed.nbytes
    for name in ("a", "b"):
        loaded = onnx.load(str(tmp_path / f"{name}.onnx"))
        for tensor in loaded.graph.initializer:
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(tensor, str(tmp_path)), transposed)


def test_views_a_worker_defers_are_written_by_the_exporter_as_one_process_writes_them(tmp_path):
    """A graph worker writes none of the views of the model's memory its graphs hold (the LLM of every prefill, the
    decode and the text graphs): the exporter writes each from its own memory, once, when it takes the worker's part
    in; the export's file and every reference come out as one process writes them, folded-away bytes included."""
    import torch

    from luvc.export.weights import StableMemory, load_inline

    torch.manual_seed(0)
    first, second = torch.randn(64, 48), torch.randn(40, 32)
    stable = StableMemory([first, second])
    computed = np.arange(900, dtype=np.float32).reshape(30, 30)  # a folded constant: memory the export does not keep
    graphs = {  # initializers in conversion order; "second" is folded away after streaming in graph "b"
        "a": {"w": first.numpy().T, "c": computed, "w_again": first.numpy().T, "rows": first.numpy()[8:40]},
        "b": {"second": second.numpy(), "w": first.numpy().T, "c2": computed + 1},
    }

    def export(folder: Path, worker: bool) -> dict[str, list]:
        folder.mkdir()
        shared = SharedWeights(folder)
        places = {}
        for name, arrays in graphs.items():
            weights = SharedWeights(folder, f"{name}.part", defer_views=True) if worker else shared
            model = weights.stream(_ir_model(arrays), 1024, stable)
            if name == "b":  # the fold reads "second" from the graph's bytes, then drops it
                load_inline(model, {"second"}, folder, weights)
                np.testing.assert_array_equal(onnx.numpy_helper.to_array(model.graph.initializer[0]), second.numpy())
                del model.graph.initializer[0]
            if worker:
                part = weights.part()
                assert (folder / part.file).stat().st_size == computed.nbytes  # only the folded constant: no view
                shared.absorb(model, part, folder, stable)
                (folder / part.file).unlink()
            onnx.save_model(model, str(folder / f"{name}.onnx"))
            places[name] = [(t.name, list(t.external_data)) for t in model.graph.initializer]
        return places

    one, workers = export(tmp_path / "one", False), export(tmp_path / "workers", True)
    assert workers == one
    assert (tmp_path / "workers" / WEIGHTS_FILE).read_bytes() == (tmp_path / "one" / WEIGHTS_FILE).read_bytes()
    assert sorted(path.name for path in (tmp_path / "workers").iterdir()) == ["a.onnx", "b.onnx", WEIGHTS_FILE]
    for name, arrays in graphs.items():
        loaded = onnx.load(str(tmp_path / "workers" / f"{name}.onnx"))
        for tensor in loaded.graph.initializer:
            expected = arrays[tensor.name]
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(tensor, str(tmp_path / "workers")), expected)


def test_a_stable_memory_key_reads_back_the_view_it_was_made_of():
    import torch

    from luvc.export.weights import StableMemory

    parameter, other = torch.randn(10, 4), torch.randn(6, 3).half()
    stable = StableMemory([parameter, other])
    for view in (parameter.numpy().T, parameter.numpy()[2:5, 1:3], other.numpy()[::2], other.numpy()):
        read = stable.array(stable.key(view))
        np.testing.assert_array_equal(read, view)
        assert read.dtype == view.dtype and read.strides == view.strides
    start, shape, strides, _ = stable.key(parameter.numpy())
    with pytest.raises(ValueError, match="no <f2 view"):
        stable.array((start, shape, strides, "<f2"))


def test_only_views_inside_stable_memory_have_an_address_key():
    import torch

    from luvc.export.weights import StableMemory

    parameter = torch.randn(10, 4)
    stable = StableMemory([parameter])
    array = parameter.numpy()
    assert stable.key(array.T) is not None and stable.key(array[2:5]) is not None
    assert stable.key(array.T) != stable.key(array)  # the same memory read another way is other bytes
    assert stable.key(np.ones((10, 4), np.float32)) is None
    assert stable.key(array[::-1]) is None  # negative strides: not placed by address


@pytest.mark.parametrize("inline", [False, True])
def test_a_streamed_weight_that_constant_folding_reads_is_folded_once_read_back(inline, tmp_path, capfd):
    """Qwen-VL's patch embedding reshapes its 6 MB weight for one Gemm, and onnx-graphsurgeon folds that Reshape with
    ONNX Runtime from the graph's bytes, where the shared file does not resolve: unless read back into the graph
    (``load_inline``) the fold fails and the graph keeps the Reshape (the vision graphs of real-size exports did, with
    ONNX Runtime's error printed)."""
    from luvc.export.manifest import constant_folded_initializers
    from luvc.export.passes import fold_constants, run_passes
    from luvc.export.weights import load_inline
    from tests.export.passes.graphs import small_model, value

    weight = np.arange(300 * 1176, dtype=np.float32).reshape(300, 2, 588) / 1e5  # 1.4 MB: streamed while tracing
    nodes = [
        onnx.helper.make_node("Reshape", ["w", "shape"], ["w2"], name="/vision/patch_embed/Reshape"),
        onnx.helper.make_node("Gemm", ["x", "w2"], ["y"], name="/vision/patch_embed/Gemm", transB=1),
    ]
    initializers = [
        onnx.numpy_helper.from_array(weight, "w"),
        onnx.numpy_helper.from_array(np.array([300, 1176], np.int64), "shape"),
    ]
    model = small_model(nodes, [value("x", [2, 1176])], [value("y", [2, 300])], initializers)
    SharedWeights(tmp_path).externalize(model)  # as ``SharedWeights.stream`` leaves a traced graph
    assert model.graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    assert constant_folded_initializers(model) == {"w", "shape"}
    if inline:
        load_inline(model, constant_folded_initializers(model), tmp_path)
    folded, _ = run_passes(model, (fold_constants,), None, "vision", lambda _: None)
    ops = [node.op_type for node in folded.graph.node]
    assert ops == (["Gemm"] if inline else ["Reshape", "Gemm"])
    if inline:
        x = np.random.default_rng(0).standard_normal((2, 1176)).astype(np.float32)
        session = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ weight.reshape(300, 1176).T, rtol=1e-5)
        # folded on purpose, over 1 MiB: onnx-graphsurgeon's advice to set a size threshold is not printed
        assert "foldable nodes" not in "".join(capfd.readouterr())
