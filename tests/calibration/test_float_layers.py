"""A layer kept float by editing the fully quantized graph is the graph quantize_static makes with it excluded."""

import numpy as np
import onnx
import pytest

from luvc.calibration.feeds import collect_feeds
from luvc.calibration.float_layers import choose_float_layers, restore_float
from luvc.calibration.quantize import excluded_nodes, layer_exclusions, quantize_graph
from luvc.calibration.ranges import activations_to_calibrate, collect_ranges
from luvc.errors import LuvcError
from luvc.export.manifest import ExportManifest
from luvc.runtime.pipeline import Pipeline
from luvc.samples import synthetic_samples


def _content(model: onnx.ModelProto) -> tuple[list, dict]:
    nodes = sorted((n.name, n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node)
    return nodes, {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}


@pytest.mark.parametrize(
    ("graph", "layers"),
    [
        ("prefill_224x224", {"llm.layers.1"}),
        ("decode", {"llm.layers.0", "llm.layers.2"}),
        ("vision_224x224", {"vision.blocks.0"}),
    ],
)
def test_restoring_layers_equals_quantizing_with_them_excluded(exports, tmp_path, graph, layers):
    source = exports("tiny-qwen2-vl")
    manifest = ExportManifest.load(source)
    pipeline = Pipeline(source)
    samples = synthetic_samples([bucket.size for bucket in manifest.buckets.values()], seed=0)[:2]
    feeds, _ = collect_feeds(pipeline, samples, 2, lambda _: None)
    pipeline.release()
    path = source / manifest.graphs[graph].file
    structure = onnx.load(str(path), load_external_data=False)
    excluded = excluded_nodes(structure, "int8")
    ranges = tmp_path / "ranges.json"
    collect_ranges(path, feeds[graph], "minmax", activations_to_calibrate(structure, excluded), ranges)
    full = quantize_graph(path, tmp_path / "full.onnx", ranges, "int8", "minmax", list(excluded))
    kept = {**excluded, **layer_exclusions(structure, frozenset(layers))}
    expected = quantize_graph(path, tmp_path / "kept.onnx", ranges, "int8", "minmax", list(kept))
    assert len(kept) > len(excluded)  # the layers hold quantized products

    edited = restore_float(full, structure, source, layers)
    (nodes, initializers), (expected_nodes, expected_initializers) = _content(edited), _content(expected)
    assert nodes == expected_nodes
    assert initializers.keys() == expected_initializers.keys()
    for name, values in expected_initializers.items():
        np.testing.assert_array_equal(initializers[name], values, err_msg=name)


def _additive(gains: dict[str, float], full: float, calls: list):
    """A measure whose float layers add their gains to ``full`` (the first-order model the search assumes)."""

    def measure(keep: frozenset[str]) -> float:
        calls.append(keep)
        return full + sum(gains[layer] for layer in keep)

    return measure


def test_the_search_finds_the_most_sensitive_layers_without_measuring_each_alone():
    gains = {f"llm.layers.{index}": 1e-5 * (index % 3) for index in range(24)}
    gains |= {f"vision.blocks.{index}": 2e-5 for index in range(32)}
    gains |= {"llm.layers.0": 4e-3, "llm.layers.1": 1.5e-3, "vision.blocks.17": 6e-4}
    calls = []
    choice = choose_float_layers(gains, _additive(gains, 0.9868, calls), 0.992, lambda _: None)
    assert choice.layers == {"llm.layers.0", "llm.layers.1"}  # 0.9923: the two largest gains, no third
    assert choice.fully_quantized == 0.9868
    assert choice.sensitivity["llm.layers.0"] == pytest.approx(4e-3)
    assert len(calls) < len(gains) / 2  # 56 layers: measuring each alone took 56 runs, and the kept ones more
    # a target one more layer away takes the next largest gain, from the other stack
    calls.clear()
    choice = choose_float_layers(gains, _additive(gains, 0.9868, calls), 0.99289, lambda _: None)
    assert choice.layers == {"llm.layers.0", "llm.layers.1", "vision.blocks.17"}


def test_a_target_every_float_layer_misses_is_refused_before_the_search():
    gains = {"llm.layers.0": 1e-3, "llm.layers.1": 1e-3}
    calls = []
    with pytest.raises(LuvcError, match="not reached even with every layer in floating point"):
        choose_float_layers(gains, _additive(gains, 0.99, calls), 0.999, lambda _: None)
    assert len(calls) == 2  # the full quantization, then every layer float


def test_a_layer_that_helps_alone_but_not_with_the_kept_ones_stays_quantized():
    gains = {"vision.blocks.0": 0.0}
    gains |= {"llm.layers.0": 4e-3, "llm.layers.1": 1.5e-3, "vision.blocks.1": 3.5e-3}
    additive = _additive(gains, 0.9868, [])

    def measure(keep: frozenset[str]) -> float:  # block 1 and layer 0 alone together undo each other
        return additive(keep) - (3.55e-3 if keep == {"vision.blocks.1", "llm.layers.0"} else 0.0)

    steps = []
    choice = choose_float_layers(gains, measure, 0.9922, steps.append)
    assert choice.layers == {"llm.layers.0", "llm.layers.1"}
    assert any(step.startswith("vision.blocks.1 left quantized") for step in steps), steps
    assert choice.sensitivity["vision.blocks.1"] == pytest.approx(3.5e-3)  # measured alone, not inferred


def test_a_kept_layer_costs_only_the_products_the_full_quantization_quantized(exports, tmp_path):
    from luvc.calibration.float_layers import FloatLayerTrials

    source = exports("tiny-qwen2-vl")
    manifest = ExportManifest.load(source)
    down = "/llm/layers.1/mlp/down_proj/MatMul"
    excluded = {"prefill_224x224": {down: "heavy-tailed input: amax 20.0x its rms (bound 12x)"}}
    trials = FloatLayerTrials(
        source, manifest, tmp_path, manifest, {"prefill_224x224": frozenset({"llm.layers.1"})}, excluded
    )
    model = onnx.load(str(source / manifest.graphs["prefill_224x224"].file))
    weights = {init.name: init for init in model.graph.initializer}
    sizes = {
        node.name: 3 * int(np.prod(weights[node.input[1]].dims))  # float32 beyond INT8's one byte
        for node in model.graph.node
        if node.name.startswith("/llm/layers.1/") and node.op_type == "MatMul" and node.input[1] in weights
    }
    assert down in sizes and len(sizes) == 7  # q, k, v, o, gate, up, down
    # the down projection was float in the full quantization already: keeping the layer does not cost it
    assert trials.extra_float_bytes(["llm.layers.1"]) == {"llm.layers.1": sum(sizes.values()) - sizes[down]}
