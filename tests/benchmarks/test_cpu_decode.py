"""``benchmarks/cpu_decode.py``: the weight bytes a decode step reads, which its bandwidth fraction divides."""

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

from tests.benchmarks import benchmark_module


def _benchmark():
    return benchmark_module("cpu_decode")


def test_step_weight_bytes_counts_what_a_step_reads_as_the_cpu_holds_it(tmp_path):
    table = numpy_helper.from_array(np.zeros((1000, 8), np.float16), "table")  # only looked up: not read whole
    projection = numpy_helper.from_array(np.zeros((8, 8), np.float16), "projection")  # 64 weights
    packed = numpy_helper.from_array(np.zeros((8, 16), ml_dtypes.int4), "packed")  # 128 int4 weights: 64 bytes
    scales = numpy_helper.from_array(np.ones((1, 16), np.float16), "scales")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["x"]),
        helper.make_node("MatMul", ["x", "projection"], ["h"]),
        helper.make_node("DequantizeLinear", ["packed", "scales"], ["w"], axis=0, block_size=8),
        helper.make_node("MatMul", ["h", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "decode",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, [1, 16])],
        [table, projection, packed, scales],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), tmp_path / "decode.onnx")
    count = _benchmark().step_weight_bytes
    # float16 as stored: 64 x 2 + 64 + 16 x 2; converted to float32 for the CPU: 64 x 4 + 64 + 16 x 4
    assert count(tmp_path, float32=False) == 128 + 64 + 32
    assert count(tmp_path, float32=True) == 256 + 64 + 64
