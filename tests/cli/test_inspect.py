import onnx
from onnx import TensorProto, helper

from luvc.cli.main import main
from luvc.export.inspect import evaluate_dim, matmul_flops


def test_inspect_shows_io_budgets_flops_lint_and_passes(exports, capsys):
    assert main(["inspect", str(exports("tiny-qwen2-vl"))]) == 0
    out = capsys.readouterr().out
    for text in (
        "budgets per layer [32, 32, 16, 0]",
        "input inputs_embeds",
        "MatMul GFLOPs",
        "TensorRT-hostile",
        "/llm/layers.2/spu",
        "/vision/blocks.0/oim",
        "pass fuse_oim_merge",
        "pass fuse_spu_gathers",
        "kv_write_index",
        "decode KV cache: tensor-scatter update in place, capacity per layer [",
        "image rules: Qwen2VLImageProcessorPil's",
    ):
        assert text in out, text


def test_matmul_flops_and_symbolic_dims():
    assert evaluate_dim("sequence_length - 16", {"sequence_length": 40}) == 24
    assert evaluate_dim("2*batch + 1", {"batch": 3}) == 7 and evaluate_dim("other", {}) is None
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", "n", 8])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["batch", "n", 5])],
        initializer=[helper.make_tensor("b", TensorProto.FLOAT, [8, 5], [0.0] * 40)],
    )
    model = helper.make_model(graph)
    assert matmul_flops(model, {"batch": 2, "n": 3}) == (2 * 2 * 3 * 5 * 8, 0)
    assert matmul_flops(model, {"batch": 2}) == (0, 1)
    onnx.checker.check_model(model)
