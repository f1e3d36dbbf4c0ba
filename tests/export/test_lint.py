"""The export lint on planted graphs, and FP32 islands removing the fp16-norm finding."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from luvc.errors import LuvcError
from luvc.export.lint import check_graph, lint_graph
from luvc.export.passes import keep_fp32_islands


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "planted", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _tensor(name, dtype=TensorProto.FLOAT, shape=(1, 8)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _rules(model, image_tokens=None):
    return [issue.rule for issue in lint_graph(model, image_tokens)]


def test_clean_graph_has_no_findings():
    k = helper.make_tensor("k", TensorProto.INT64, [1], [4])
    model = _model(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="/llm/layers.2/spu/TopK")],
        [_tensor("x")],
        [_tensor("v", shape=(1, 4)), _tensor("i", TensorProto.INT64, (1, 4))],
        [k],
    )
    assert lint_graph(model) == []
    check_graph(model, "clean")


def test_planted_dft_is_caught():
    model = _model(
        [helper.make_node("DFT", ["x"], ["y"], name="/llm/layers.2/spu/DFT")], [_tensor("x")], [_tensor("y")]
    )
    with pytest.raises(LuvcError, match=r"\[op\] /llm/layers.2/spu/DFT: DFT: TensorRT has no DFT"):
        check_graph(model, "planted")


def test_planted_topk_above_tensorrt_limit_is_caught():
    k = helper.make_tensor("k", TensorProto.INT64, [1], [5000])
    model = _model(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="big")],
        [_tensor("x", shape=(1, 8192))],
        [_tensor("v", shape=(1, 5000)), _tensor("i", TensorProto.INT64, (1, 5000))],
        [k],
    )
    assert _rules(model) == ["topk"]
    with pytest.raises(LuvcError, match="k=5000 exceeds TensorRT's TopK limit of 3840"):
        check_graph(model, "planted")


def test_topk_with_runtime_k_is_caught():
    model = _model(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="dyn")],
        [_tensor("x"), _tensor("k", TensorProto.INT64, (1,))],
        [_tensor("v"), _tensor("i", TensorProto.INT64)],
    )
    assert _rules(model) == ["topk"]


def test_planted_nonzero_is_caught():
    model = _model(
        [helper.make_node("NonZero", ["x"], ["y"], name="nz")],
        [_tensor("x")],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2, "u0"])],
    )
    assert sorted(_rules(model)) == ["dynamic-shape", "op"]


def test_quadratic_mask_input_and_constant_are_caught():
    mask = helper.make_tensor("bias", TensorProto.FLOAT, [64, 64], np.where(np.tri(64), 0, -np.inf).ravel())
    model = _model(
        [helper.make_node("Add", ["attention_mask", "bias"], ["y"], name="add")],
        [_tensor("attention_mask", shape=(1, 64, 64))],
        [_tensor("y", shape=(1, 64, 64))],
        [mask],
    )
    assert _rules(model, image_tokens=64) == ["dense-mask", "dense-mask"]
    assert _rules(model, image_tokens=65) == []


@pytest.mark.parametrize(("length", "rules"), [(64, []), ("sequence_length", ["dense-mask"])])
def test_a_constant_causal_mask_passes_only_in_a_graph_of_one_length(length, rules):
    """A hybrid model's prefill is traced at one length, so its causal masks fold into constants; a graph whose
    sequence axis is dynamic has no reason to hold one."""
    mask = helper.make_tensor("causal", TensorProto.BOOL, [64, 64], np.tri(64, dtype=bool).ravel())
    model = _model(
        [helper.make_node("Where", ["causal", "inputs_embeds", "zero"], ["y"], name="/llm/layers.3/self_attn/Where")],
        [_tensor("inputs_embeds", shape=(1, length, 64)), _tensor("zero", shape=(1,))],
        [_tensor("y", shape=(1, length, 64))],
        [mask],
    )
    assert _rules(model, image_tokens=64) == rules


def test_fp16_norm_is_caught_and_fp32_islands_fix_it():
    scale = helper.make_tensor("scale", TensorProto.FLOAT16, [8], np.ones(8, np.float16))
    model = _model(
        [
            helper.make_node("LayerNormalization", ["x", "scale"], ["n"], name="/vision/blocks.0/norm1/LN"),
            helper.make_node("Softmax", ["n"], ["y"], name="/vision/blocks.0/attn/Softmax"),
        ],
        [_tensor("x", TensorProto.FLOAT16)],
        [_tensor("y", TensorProto.FLOAT16)],
        [scale],
    )
    model = onnx.shape_inference.infer_shapes(model)  # exported graphs carry value_info for every tensor
    assert _rules(model) == ["fp16-norm"]
    fixed = gs.export_onnx(keep_fp32_islands(gs.import_onnx(model)))
    onnx.checker.check_model(fixed)
    assert _rules(fixed) == []
    ops = [node.op_type for node in fixed.graph.node]
    assert ops.count("Cast") == 4 and "LayerNormalization" in ops and "Softmax" in ops
    import onnxruntime as ort

    x = np.random.default_rng(0).normal(size=(1, 8)).astype(np.float16) * 300  # squares overflow fp16
    session = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    assert y.dtype == np.float16 and np.isfinite(y).all() and abs(float(y.astype(np.float32).sum()) - 1) < 1e-2
    again = gs.export_onnx(keep_fp32_islands(gs.import_onnx(fixed)))  # a second run changes nothing
    assert [node.op_type for node in again.graph.node] == ops


def test_a_norm_scale_read_by_two_norms_is_widened_once():
    """A scale that several fp16 norms share (a vision encoder's norms across merged images) gets one float32 copy;
    a copy per norm gave graphsurgeon distinct tensors of one name, and a warning per pair on the user's terminal."""
    scale = helper.make_tensor("scale", TensorProto.FLOAT16, [8], np.full(8, 2.0, np.float16))
    model = _model(
        [
            helper.make_node("LayerNormalization", ["x", "scale"], ["a"], name="/vision/blocks.0/norm1/LN"),
            helper.make_node("LayerNormalization", ["a", "scale"], ["y"], name="/vision/blocks.0/norm1/LN_1"),
        ],
        [_tensor("x", TensorProto.FLOAT16)],
        [_tensor("y", TensorProto.FLOAT16)],
        [scale],
    )
    model = onnx.shape_inference.infer_shapes(model)
    graph = keep_fp32_islands(gs.import_onnx(model))
    scales = [node.inputs[1] for node in graph.nodes if node.op == "LayerNormalization"]
    assert [tensor.name for tensor in scales] == ["scale/fp32", "scale/fp32"]
    assert scales[0] is scales[1]  # one tensor object: graphsurgeon sees no two tensors of one name
    fixed = gs.export_onnx(graph)
    onnx.checker.check_model(fixed)
    assert [init.name for init in fixed.graph.initializer] == ["scale/fp32"]


@pytest.mark.parametrize(("dtype", "rules"), [(TensorProto.INT64, ["cuda-cpu"]), (TensorProto.FLOAT16, [])])
def test_a_pad_the_cuda_ep_runs_on_the_cpu_is_caught(dtype, rules):
    """An int64 Pad (the LUVC prefill built its shifted gather index with two) runs on the CPU under ONNX Runtime's CUDA
    EP, between device tensors: the graph cannot be captured as a CUDA graph (seen on an H200)."""
    pads = helper.make_tensor("pads", TensorProto.INT64, [4], [0, 1, 0, 1])
    model = _model(
        [helper.make_node("Pad", ["x", "pads"], ["y"], name="/llm/layers.2/spu/Pad")],
        [_tensor("x", dtype)],
        [_tensor("y", dtype, (1, 10))],
        [pads],
    )
    assert _rules(model) == rules
    if rules:
        message = str(lint_graph(model)[0])
        assert message.startswith("[cuda-cpu] /llm/layers.2/spu/Pad: Pad on int64: ONNX Runtime's CUDA EP")
