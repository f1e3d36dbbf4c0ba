"""``luvc-export plan``: the KV figure is the runtime's, weights are the graphs', the verdict and the advice."""

import numpy as np
import onnx
import pytest

from luvc.cli.main import main
from luvc.engines.memory import GiB, graph_weight_bytes, plan_memory
from luvc.export.manifest import ExportManifest, load_graph
from luvc.runtime.pipeline import Pipeline


def test_the_kv_figure_is_what_the_runtime_allocates(exports):
    export = exports("tiny-qwen2-vl")
    plan = plan_memory(export, "orin-8gb")
    pipeline = Pipeline(export)
    assert plan.kv_bytes_per_row == pipeline.sessions.kv_cache(1).capacity_bytes()
    assert (
        plan.kv_bytes
        == pipeline.sessions.kv_cache(plan.max_batch).capacity_bytes()
        == pipeline.sessions.kv_buffer_bytes()
    )
    assert plan.kv_bytes_uncompressed > plan.kv_bytes  # every layer holds every visual token before OIM


def test_graph_weights_are_the_initializer_bytes(exports):
    export = exports("tiny-llava")  # keeps its weights in weights.data
    manifest = ExportManifest.load(export, verify=False)
    for name, graph in manifest.graphs.items():
        model = load_graph(export, name, manifest)
        expected = sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
        assert graph_weight_bytes(export / graph.file) == expected


def test_a_plan_that_fits_and_one_that_needs_a_smaller_batch(exports, capsys):
    export = exports("tiny-qwen2-vl")
    assert main(["plan", str(export), "--target", "80"]) == 0
    assert "fits" in capsys.readouterr().out
    assert main(["plan", str(export), "--target", "1.5"]) in (0, 1)  # fits or not: the title is the point
    out = capsys.readouterr().out
    assert "Memory plan on GPU with 1.5 GiB" in out and "(2 GiB)" not in out  # issue 77: was "1.5 GiB (2 GiB)"
    plan = plan_memory(export, "80")
    fixed = plan.total_bytes - plan.kv_bytes - plan.replay_bytes
    target = (fixed + 2.5 * plan.bytes_per_row) / GiB  # room for two and a half batch rows of KV cache
    assert main(["plan", str(export), "--target", f"{target:.9f}"]) == 1
    out = capsys.readouterr().out
    assert "does not fit" in out and "Re-export with --max-batch 2" in out
    llm = [
        name
        for name, graph in ExportManifest.load(export).graphs.items()
        if graph.kind in ("prefill", "decode", "text")
    ]
    assert f"this export's {len(llm)} LLM engines would each hold them" in out  # quantized weights, once per engine


@pytest.mark.parametrize("target", ["orin-4gb", "-3", "8_0", "1e3", "inf", "nan", ""])
def test_an_unknown_target_is_one_line(exports, capsys, target):
    assert main(["plan", str(exports("tiny-qwen2-vl")), "--target", target]) == 2
    err = capsys.readouterr().err
    assert f"Target {target!r} is neither a device (orin-8gb" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("0.001", "holds no more than the 1 GiB kept for the CUDA context"),
        ("1", "holds no more than"),
        ("2000", "no GPU has 2000 GiB"),
    ],
)
def test_a_gpu_size_no_gpu_has_is_one_line(exports, capsys, target, message):
    assert main(["plan", str(exports("tiny-qwen2-vl")), "--target", target]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_device_the_reserve_and_activations_fill_is_told_so_not_to_shrink_the_export(exports, capsys):
    assert main(["plan", str(exports("tiny-qwen2-vl")), "--target", "2.5"]) == 1  # 1 GiB reserve + 2 of activations
    out = " ".join(capsys.readouterr().out.split())
    assert "alone take all of it: choose a device with more memory" in out
    assert "--max-batch" not in out and "--max-new-tokens" not in out


def test_weights_from_engines_are_the_engine_sizes(exports, tmp_path):
    from luvc.engines.builder import build_engines
    from luvc.engines.manifest import EngineManifest

    export = exports("tiny-llava")  # its weights in weights.data: the shared layout
    engines = build_engines(export, "ampere", tmp_path / "engines")
    plan = plan_memory(export, "orin-16gb", engines)
    sizes = {name: entry.bytes for name, entry in EngineManifest.load(engines).engines.items()}
    assert plan.weights.per_engine == sizes and plan.weights.source == "engines"
    # the shared layout's weight inputs once, beside the engine files; from the ONNX graphs the same tensors
    assert plan.weights.shared == plan_memory(export, "orin-16gb").weights.shared > 0
    assert np.isclose(plan.weight_bytes, sum(sizes.values()) + plan.weights.shared)


def test_the_cuda_graphs_buffers_are_counted_unless_off(exports, capsys):
    """Every planned shape's buffers (tests/engines/test_static_shapes.py checks them against real captures): a prefill
    at its longest holds its presents, so the buffers pass one KV cache of the profile's largest batch."""
    export = exports("tiny-qwen2-vl")
    plan, off = plan_memory(export, "80", cuda_graphs=True), plan_memory(export, "80", cuda_graphs=False)
    assert plan.replay_bytes > plan.kv_bytes > 0 and plan.replay_shapes > 0
    assert off.replay_bytes == off.replay_shapes == 0
    assert plan.total_bytes - off.total_bytes == plan.replay_bytes
    assert main(["plan", str(export), "--target", "80", "--cuda-graphs", "on"]) == 0
    assert f"CUDA graphs: {plan.replay_shapes} shapes' buffers" in capsys.readouterr().out
    for choice in ("off", "auto"):  # auto replays nothing while the runtime's replay waits for its GPU check
        assert main(["plan", str(export), "--target", "80", "--cuda-graphs", choice]) == 0
        assert "CUDA graphs" not in capsys.readouterr().out


def test_openvino_counts_each_graphs_own_copy_and_a_products_weight_again_during_its_first_run():
    """A product's float weight: once in the compute precision, and once more while the graph first runs (the
    compiled copy it repacks from); a table: once in f32; a quantized product weight: as stored, its scale in f32."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from luvc.engines.memory import openvino_graph_bytes

    weight = numpy_helper.from_array(np.zeros((64, 32), np.float16), "weight")
    table = numpy_helper.from_array(np.zeros((100, 8), np.float16), "table")
    quantized = numpy_helper.from_array(np.zeros((32, 16), np.int8), "quantized")
    scale = numpy_helper.from_array(np.ones(16, np.float32), "scale")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"]),
        helper.make_node("MatMul", ["x", "weight"], ["y"]),
        helper.make_node("DequantizeLinear", ["quantized", "scale"], ["dequantized"], axis=1),
        helper.make_node("MatMul", ["y", "dequantized"], ["z"]),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 64]),
        helper.make_tensor_value_info("ids", TensorProto.INT64, [1]),
    ]
    outputs = [
        helper.make_tensor_value_info("z", TensorProto.FLOAT16, [1, 16]),
        helper.make_tensor_value_info("rows", TensorProto.FLOAT16, [1, 8]),
    ]
    graph = helper.make_graph(nodes, "g", inputs, outputs, [weight, table, quantized, scale])
    model = helper.make_model(graph)
    fixed = 100 * 8 * 4 + 16 * 4
    bf16, f32 = openvino_graph_bytes(model, "bf16"), openvino_graph_bytes(model, "f32")
    assert (bf16.held, bf16.first_run) == (64 * 32 * 2 + 32 * 16 + fixed, 64 * 32 * 2 + 32 * 16)
    assert (f32.held, f32.first_run) == (64 * 32 * 4 + 32 * 16 + fixed, 64 * 32 * 4 + 32 * 16)


def test_plan_for_openvino_counts_every_graph_and_refuses_engines(exports, capsys):
    from luvc.cli.main import main

    folder = str(exports("tiny-qwen2-vl"))
    assert main(["plan", folder, "--target", "16", "--backend", "openvino"]) == 0
    out = capsys.readouterr().out
    assert "CPU host with 16 GiB" in out and "decode: OpenVINO's copy" in out and "prefill_text" in out
    assert "a graph's first run: the copy it repacks" in out
    assert main(["plan", folder, "--target", "16", "--backend", "openvino", "--engines", folder]) == 2
    assert "--engines are TensorRT's" in capsys.readouterr().err
