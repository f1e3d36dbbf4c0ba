"""Weight-only INT8 products given to ONNX Runtime as the ``MatMulNBits`` its CPU EP makes of them itself: the layout,
equality with ONNX Runtime's own rewrite, and the pairs left alone."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from luvc.runtime.matmul_nbits import (
    BLOCK_SIZE,
    as_matmul_nbits,
    blocked_scales,
    blocked_weight,
    given,
    weight_only_products,
)

K, N = 80, 48  # 80 input rows: two whole blocks of 32 and a padded one


def _weight_only_graph(rng, dequantize_inputs=("w", "scales"), activation_quantized=False, **dequantize_attributes):
    """``y = x @ DequantizeLinear(w int8 (K, N), scales (N,))``, optionally with the activation through Q/DQ."""
    weight = rng.integers(-127, 128, size=(K, N), dtype=np.int8)
    scales = (rng.random(N) * 0.02 + 0.001).astype(np.float32)
    initializers = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(scales, "scales")]
    nodes = [
        helper.make_node("DequantizeLinear", list(dequantize_inputs), ["w_float"], axis=1, **dequantize_attributes)
    ]
    activation = "x"
    if activation_quantized:
        initializers += [
            numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
            helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        ]
        activation = "x_dq"
    nodes.append(helper.make_node("MatMul", [activation, "w_float"], ["y"], name="product"))
    graph = helper.make_graph(
        nodes,
        "weight_only",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, K])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, N])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), weight, scales


def test_the_blocked_weight_holds_each_column_in_blocks_of_32_rows_offset_by_128():
    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, size=(K, N), dtype=np.int8)
    blocked = blocked_weight(weight)
    assert blocked.dtype == np.uint8 and blocked.shape == (N, 3, BLOCK_SIZE)
    for column in (0, 17, N - 1):
        for row in (0, 31, 32, 63, 64, K - 1):
            assert int(blocked[column, row // 32, row % 32]) - 128 == int(weight[row, column])
    assert (blocked[:, 2, K - 64 :] == 128).all()  # the last block's padding is a zero weight
    scales = np.arange(1, N + 1, dtype=np.float16)
    assert blocked_scales(scales, K).tolist() == [float(s) for s in scales for _ in range(3)]


def test_a_rewritten_product_computes_exactly_what_onnx_runtime_makes_of_the_pair(tmp_path):
    rng = np.random.default_rng(1)
    model, weight, scales = _weight_only_graph(rng)
    x = rng.standard_normal((3, K)).astype(np.float32)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    (own,) = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    # the premise: ONNX Runtime fuses the pair into MatMulNBits itself (else there would be nothing to match)
    assert "MatMulNBits" in {node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}

    products = weight_only_products(model)
    assert [(product.weight, product.scales, product.k, product.n) for product in products] == [("w", "scales", K, N)]
    (tmp_path / "weights.data").write_bytes(b"\0")  # the file the declarations name must exist (it is never read)
    arrays = dict(zip(products[0].blocked_names, (blocked_weight(weight), blocked_scales(scales, K)), strict=True))
    inline = onnx.ModelProto.FromString(model.SerializeToString())
    as_matmul_nbits(model, products, {name: given(name, array, "weights.data") for name, array in arrays.items()})
    assert [node.op_type for node in model.graph.node] == ["MatMulNBits"]
    assert {tensor.name for tensor in model.graph.initializer} == set(arrays)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(tmp_path))
    values = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in arrays.items()}
    for name, value in values.items():
        options.add_initializer(name, value)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (rewritten,) = session.run(None, {"x": x})
    np.testing.assert_array_equal(rewritten, own)
    # the same with the converted tensors inline in the graph
    as_matmul_nbits(inline, products, {name: numpy_helper.from_array(array, name) for name, array in arrays.items()})
    session = ort.InferenceSession(inline.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], own)
    exact = x @ (weight.astype(np.float32) * scales)
    np.testing.assert_allclose(rewritten, exact, rtol=0.05, atol=0.05 * np.abs(exact).max())  # int8 activations


@pytest.mark.parametrize(
    "case",
    ["activation quantized", "zero point not zero", "read twice", "blockwise"],
)
def test_a_pair_onnx_runtime_fuses_otherwise_is_left_as_it_is(case):
    rng = np.random.default_rng(2)
    if case == "activation quantized":  # an INT8 Q/DQ product: ONNX Runtime fuses it into an integer product
        model, _, _ = _weight_only_graph(rng, activation_quantized=True)
    elif case == "zero point not zero":
        model, _, _ = _weight_only_graph(rng, dequantize_inputs=("w", "scales", "zero"))
        model.graph.initializer.append(numpy_helper.from_array(np.ones(N, np.int8), "zero"))
    elif case == "read twice":
        model, _, _ = _weight_only_graph(rng)
        model.graph.node.append(helper.make_node("Identity", ["w_float"], ["w_copy"]))
    else:
        model, _, _ = _weight_only_graph(rng, block_size=16)
    assert weight_only_products(model) == []


def test_a_zero_zero_point_is_no_zero_point():
    model, _, _ = _weight_only_graph(np.random.default_rng(3), dequantize_inputs=("w", "scales", "zero"))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(N, np.int8), "zero"))
    assert len(weight_only_products(model)) == 1
