"""Graph passes on the real exported graphs: same ONNX Runtime outputs, idempotent, smaller, parse in TensorRT-RTX."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from luvc.engines.profiles import dimension_ranges
from luvc.export.inspect import evaluate_dim
from luvc.export.manifest import ExportManifest, load_graph
from luvc.export.passes import PASSES, run_passes
from tests.conftest import EXPORT_MATRIX

FAMILIES = EXPORT_MATRIX


def random_feeds(folder, manifest: ExportManifest, graph: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of ``graph`` at the middle of its profile; host metadata from the bucket's npz."""
    rng = np.random.default_rng(seed)
    entry = manifest.graphs[graph]
    sizes = {name: (low + high) // 2 for name, (low, _, high) in dimension_ranges(manifest, graph).items()}
    sizes.update(batch=2, images=2)
    host = np.load(folder / manifest.buckets[entry.bucket].host) if entry.bucket else {}
    feeds = {}
    for io in entry.inputs:
        if io.name in host:
            feeds[io.name] = host[io.name]
            continue
        shape = [evaluate_dim(dim, sizes) for dim in io.shape]
        if io.dtype == "int64":
            feeds[io.name] = rng.integers(0, 200, size=shape, dtype=np.int64)
        elif io.dtype == "bool":  # the decode graph's attention window: only its length is read
            feeds[io.name] = np.zeros(shape, dtype=bool)
        else:
            feeds[io.name] = rng.normal(size=shape).astype(np.float32)
    return feeds


def _run(model: onnx.ModelProto, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _graphs(exports, family):
    folder = exports(family, passes=False)  # the exporter's own output, before any pass
    manifest = ExportManifest.load(folder)
    return folder, manifest, [name for name in manifest.graphs if name != "embed"]


def _differences(got, expected) -> list[str]:
    """What differs between two runs' outputs: integers at all, floats by more than 1e-6."""
    differences = []
    for index, (value, want) in enumerate(zip(got, expected, strict=True)):
        if np.issubdtype(want.dtype, np.integer):
            same = value.shape == want.shape and np.array_equal(value, want)
        else:
            same = value.shape == want.shape and np.abs(value - want).max(initial=0.0) <= 1e-6
        if not same:
            differences.append(f"output {index}")
    return differences


@pytest.mark.parametrize("family", FAMILIES)
def test_every_pass_keeps_outputs_equal(family, exports):
    """Every graph computes the same after all the passes; where it does not, the first pass that changed it is
    named (each pass then runs on its own: a session per pass and graph costs minutes, so only on a failure)."""
    folder, manifest, names = _graphs(exports, family)
    for name in names:
        model = load_graph(folder, name, manifest)
        feeds = random_feeds(folder, manifest, name)
        expected = _run(model, feeds)
        fused, _ = run_passes(model)
        if not _differences(_run(fused, feeds), expected):
            continue
        current = model
        for graph_pass in PASSES:
            current, _ = run_passes(current, [graph_pass])
            differences = _differences(_run(current, feeds), expected)
            assert not differences, f"{name} after {graph_pass.__name__}: {differences}"
        pytest.fail(f"{name}: the passes together change {_differences(_run(fused, feeds), expected)}")


@pytest.mark.parametrize("family", FAMILIES)
def test_passes_are_idempotent_and_shrink_oim_and_spu(family, exports):
    folder, manifest, names = _graphs(exports, family)
    for name in names:
        model = load_graph(folder, name, manifest)
        once, stats = run_passes(model)
        twice, again = run_passes(once)
        assert [node.op_type for node in twice.graph.node] == [node.op_type for node in once.graph.node]
        assert all(stat.delta == 0 for stat in again)
        for kind in ("oim", "spu"):
            before = sum(f"/{kind}/" in node.name for node in model.graph.node)
            after = sum(f"/{kind}/" in node.name for node in once.graph.node)
            assert after <= before
            # gathers stay for window order (Qwen2.5-VL) and odd grids (Qwen3-VL's patch 16 makes 224 px 7 units)
            regular = family in ("tiny-qwen2-vl", "tiny-llava", "tiny-internvl") and name.endswith("224x224")
            if before and (kind == "spu" or regular):
                assert after < before, (name, kind, before, after)


def test_fused_graphs_parse_in_tensorrt_rtx(exports):
    trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")
    for family in FAMILIES:
        folder, manifest, names = _graphs(exports, family)
        for name in names:
            fused, _ = run_passes(load_graph(folder, name, manifest))
            logger = trt.Logger(trt.Logger.ERROR)
            builder = trt.Builder(logger)  # the builder owns the network: keep it alive while parsing
            network = builder.create_network(0)
            parser = trt.OnnxParser(network, logger)
            assert parser.parse(fused.SerializeToString()), [
                parser.get_error(i).desc() for i in range(parser.num_errors)
            ]
