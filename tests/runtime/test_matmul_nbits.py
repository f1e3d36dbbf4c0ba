"""Weight-only INT8 products given to ONNX Runtime as the ``MatMulNBits`` its CPU EP makes of them itself: the layout,
equality with ONNX Runtime's own rewrite, and the pairs left alone."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from luvc.runtime.matmul_nbits import (
    NBitsProduct,
    as_matmul_nbits,
    blocked_scales,
    blocked_weight,
    given,
    unpacked_int4,
    weight_only_products,
)

K, N = 80, 48  # 80 input rows: two whole blocks of 32 and a padded one


def _weight_only_graph(
    rng, dequantize_inputs=("w", "scales"), activation_quantized=False, bits=8, **dequantize_attributes
):
    """``y = x @ DequantizeLinear(w, scales)``: an int8 ``(K, N)`` weight with a scale per column (axis 1), or
    (``bits=4``) an int4 one with a scale per 32 rows of a column (axis 0); optionally with the activation through
    Q/DQ. Returns the model, the weight's values and the scales."""
    if bits == 8:
        weight = rng.integers(-127, 128, size=(K, N), dtype=np.int8)
        scales = (rng.random(N) * 0.02 + 0.001).astype(np.float32)
        stored = numpy_helper.from_array(weight, "w")
        dequantize_attributes = {"axis": 1, **dequantize_attributes}
    else:
        weight = rng.integers(-7, 8, size=(K, N), dtype=np.int8)
        scales = (rng.random((3, N)) * 0.02 + 0.001).astype(np.float32)
        stored = helper.make_tensor("w", onnx.TensorProto.INT4, (K, N), weight.reshape(-1).tolist())
        dequantize_attributes = {"axis": 0, "block_size": 32, **dequantize_attributes}
    initializers = [stored, numpy_helper.from_array(scales, "scales")]
    dequantize = helper.make_node("DequantizeLinear", list(dequantize_inputs), ["w_float"], **dequantize_attributes)
    nodes = [dequantize]
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


def test_the_blocked_weight_holds_each_column_in_blocks_of_rows_offset_by_the_zero_point():
    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, size=(K, N), dtype=np.int8)
    product = NBitsProduct(onnx.NodeProto(), onnx.NodeProto(), "w", "s", K, N)  # INT8: blocks of 32 rows
    blocked = blocked_weight(product, weight)
    assert blocked.dtype == np.uint8 and blocked.shape == (N, 3, 32)
    for column in (0, 17, N - 1):
        for row in (0, 31, 32, 63, 64, K - 1):
            assert int(blocked[column, row // 32, row % 32]) - 128 == int(weight[row, column])
    assert (blocked[:, 2, K - 64 :] == 128).all()  # the last block's padding is a zero weight
    scales = np.arange(1, N + 1, dtype=np.float16)
    assert blocked_scales(product, scales).tolist() == [float(s) for s in scales for _ in range(3)]

    four = rng.integers(-7, 8, size=(K, N), dtype=np.int8)
    product = NBitsProduct(onnx.NodeProto(), onnx.NodeProto(), "w", "s", K, N, bits=4, block_size=32)
    blocked = blocked_weight(product, four)
    assert blocked.shape == (N, 3, 16)  # two values a byte
    for column in (0, 17, N - 1):
        for row in (0, 1, 30, 31, 32, 33, K - 1):
            byte = int(blocked[column, row // 32, (row % 32) // 2])
            nibble = byte & 0x0F if row % 2 == 0 else byte >> 4  # the even row in the low nibble
            assert nibble - 8 == int(four[row, column])
    assert (blocked[:, 2, (K - 64) // 2 :] == 0x88).all()
    block_scales = np.arange(3 * N, dtype=np.float32).reshape(3, N)  # (blocks, N)
    assert blocked_scales(product, block_scales)[:4].tolist() == [0.0, N, 2 * N, 1.0]  # column 0's blocks, then 1's


def test_int4_values_unpack_as_onnx_packs_them():
    values = np.array([[-7, 7, 0], [1, -1, -8]], dtype=np.int8)
    stored = helper.make_tensor("w", onnx.TensorProto.INT4, values.shape, values.reshape(-1).tolist())
    packed = np.frombuffer(stored.raw_data or bytes(stored.int32_data), np.uint8)
    np.testing.assert_array_equal(unpacked_int4(packed, values.shape), values)


@pytest.mark.parametrize("bits", [8, 4])
def test_a_rewritten_product_computes_exactly_what_onnx_runtime_makes_of_the_pair(tmp_path, bits):
    rng = np.random.default_rng(1)
    model, weight, scales = _weight_only_graph(rng, bits=bits)
    x = rng.standard_normal((3, K)).astype(np.float32)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    (own,) = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    # the premise: ONNX Runtime fuses the pair into MatMulNBits itself (else there would be nothing to match)
    assert "MatMulNBits" in {node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}

    (product,) = weight_only_products(model)
    assert (product.weight, product.scales, product.k, product.n, product.bits) == ("w", "scales", K, N, bits)
    (tmp_path / "weights.data").write_bytes(b"\0")  # the file the declarations name must exist (it is never read)
    arrays = dict(
        zip(product.blocked_names, (blocked_weight(product, weight), blocked_scales(product, scales)), strict=True)
    )
    inline = onnx.ModelProto.FromString(model.SerializeToString())
    as_matmul_nbits(model, [product], {name: given(name, array, "weights.data") for name, array in arrays.items()})
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
    as_matmul_nbits(inline, [product], {name: numpy_helper.from_array(array, name) for name, array in arrays.items()})
    session = ort.InferenceSession(inline.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], own)
    per_row = scales if bits == 8 else np.repeat(scales, 32, axis=0)[:K]
    exact = x @ (weight.astype(np.float32) * per_row)
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
    else:  # a per-column INT8 weight in blocks: not what ONNX Runtime's rewrite takes
        model, _, _ = _weight_only_graph(rng, block_size=16)
    assert weight_only_products(model) == []


def test_a_zero_zero_point_is_no_zero_point():
    model, _, _ = _weight_only_graph(np.random.default_rng(3), dequantize_inputs=("w", "scales", "zero"))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(N, np.int8), "zero"))
    assert len(weight_only_products(model)) == 1
