"""Explicit quantization of one exported graph with ONNX Runtime's static Q/DQ quantizer.

Only weight GEMMs (MatMul, Gemm, Conv with an initializer input) are quantized, symmetrically, per tensor for
activations and per channel for weights. What stays in floating point is chosen by node name and recorded:
SPU scoring and selection, OIM merging, norm statistics, attention products of two activations, and the LM head.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np
import onnx

from luvc.errors import critical
from luvc.export.naming import layer_name, place_of
from luvc.runtime.ort_logging import default_logger_errors_only

QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
# precision -> (ONNX Runtime QuantType name, largest quantized magnitude)
PRECISIONS = {"int8": ("QInt8", 127.0), "fp8": ("QFLOAT8E4M3FN", 448.0), "int4": ("QInt4", 7.0)}
# precisions that quantize weights only (``luvc.calibration.weight_only``): activations stay float, nothing is
# calibrated, and only the LLM's graphs change
WEIGHT_ONLY = frozenset({"int4"})
# method -> ONNX Runtime CalibrationMethod name (None: no calibration), and the precisions it applies to
METHODS = {
    "minmax": ("MinMax", ("int8",)),
    "entropy": ("Entropy", ("int8",)),
    "percentile": ("Percentile", ("int8",)),
    "distribution": ("Distribution", ("fp8",)),
    "rtn": (None, ("int4",)),  # round to nearest, block-wise
    "gptq": (None, ("int4",)),  # GPTQ with the calibration inputs, block-wise (``luvc.calibration.hessians``)
}
# how ONNX Runtime's quantizer starts its advice to pre-process the model, printed twice per graph
PREPROCESS_ADVICE = ("Please consider to run pre-processing", "Please consider pre-processing")
# LUVC unit -> why its nodes stay in floating point
KEEP_UNITS_FLOAT = {"spu": "SPU scoring and selection", "oim": "OIM merge"}
# node-name fragment -> why the node stays in floating point
KEEP_FLOAT = {
    "norm": "norm statistics",
    "/lm_head/": "logits",
}


# precision -> the calibration method used when none is given
DEFAULT_METHODS = {"int8": "entropy", "fp8": "distribution", "int4": "gptq"}


def check_method(precision: str, method: str) -> None:
    """Refuse a precision/method pair ONNX Runtime's quantizer cannot calibrate, naming the ones it can."""
    if precision not in PRECISIONS:
        critical(f"Cannot calibrate to {precision!r}; choose --precision from {sorted(PRECISIONS)}.")
    if method not in METHODS:
        critical(f"Unknown calibration method {method!r}; choose --method from {sorted(METHODS)}.")
    if precision not in METHODS[method][1]:
        allowed = sorted(name for name, (_, precisions) in METHODS.items() if precision in precisions)
        critical(
            f"--method {method} does not quantize {precision}: {precision} is quantized with {allowed}; pass "
            f"--method {allowed[0]}."
        )


def excluded_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Nodes kept in floating point, with the reason: LUVC units, norms, the LM head, and activation-by-activation
    MatMuls (attention scores and context)."""
    weights = {init.name for init in model.graph.initializer}
    weights |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    excluded = {}
    for node in model.graph.node:
        unit = _unit_of(node)
        reason = KEEP_UNITS_FLOAT.get(unit) if unit else None
        reason = reason or next((why for fragment, why in KEEP_FLOAT.items() if fragment in node.name.lower()), None)
        if reason is None and node.op_type in QUANTIZED_OPS and not any(name in weights for name in node.input[:2]):
            reason = "attention product of two activations"
        if reason is not None:
            excluded[node.name] = reason
    # ONNX Runtime quantizes a Gemm's output too: a Gemm whose output a LUVC unit reads (Qwen3-VL's DeepStack
    # mergers feed the OIM merge) or a node kept float reads (a Qwen-VL patch embedding, exported as one Gemm, feeds
    # the first block's norm) stays float, so those never read quantized data
    unit_inputs = {name for node in model.graph.node if _unit_of(node) for name in node.input}
    float_inputs = {name for node in model.graph.node if node.name in excluded for name in node.input}
    for node in model.graph.node:
        if node.op_type == "Gemm" and node.name not in excluded:
            if unit_inputs & set(node.output):
                excluded[node.name] = "feeds a LUVC unit"
            elif float_inputs & set(node.output):
                excluded[node.name] = "feeds a node kept float"
    return excluded


KEPT_FOR_AGREEMENT = "kept float for the target agreement"


def layer_of(node: onnx.NodeProto) -> str | None:
    """The layer a node belongs to (``llm.layers.3``, ``vision.blocks.0``), ``None`` outside the layer stacks."""
    place = place_of(node.name)
    return layer_name(place.stack, place.index) if place is not None else None


def quantized_layers(model: onnx.ModelProto, excluded: dict[str, str]) -> set[str]:
    """The layers of ``model`` that hold a node the quantizer quantizes (a weight product not in ``excluded``)."""
    return {
        layer
        for node in model.graph.node
        if node.op_type in QUANTIZED_OPS and node.name not in excluded and (layer := layer_of(node)) is not None
    }


def layer_exclusions(model: onnx.ModelProto, layers: frozenset[str]) -> dict[str, str]:
    """The quantizable nodes of ``layers`` in ``model``, each with the reason it stays float."""
    return {
        node.name: KEPT_FOR_AGREEMENT
        for node in model.graph.node
        if node.op_type in QUANTIZED_OPS and layer_of(node) in layers
    }


def _unit_of(node: onnx.NodeProto) -> str | None:
    place = place_of(node.name)
    return place.unit if place is not None else None


class FeedReader:
    """ONNX Runtime ``CalibrationDataReader`` over a list of feed dicts, with the ``set_range`` its strided
    calibration uses."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self.index, self.end = 0, len(feeds)

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.index, self.end = start_index, min(end_index, len(self.feeds))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= self.end:
            return None
        self.index += 1
        return self.feeds[self.index - 1]


def quantize_graph(
    source: Path,
    out: Path,
    feeds: list[dict[str, np.ndarray]],
    precision: str,
    method: str,
    excluded: list[str],
    external_data: bool = False,
    ranges_cache: Path | None = None,
) -> onnx.ModelProto:
    """Calibrate ``source`` on ``feeds`` and write its Q/DQ version to ``out`` (weights beside it with
    ``external_data``, as graphs over 2 GB need); return it with its weights loaded. With ``ranges_cache`` the
    ranges calibrated the first time are kept in that file and read from it after (quantizing again with other
    exclusions calibrates nothing)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    check_method(precision, method)
    quant_type = getattr(QuantType, PRECISIONS[precision][0])
    # the histogram calibrators print their progress (the calibrate progress bar reports it instead), and the
    # calibration sessions warn on every decode run that the KV update is copied (true, and harmless there)
    with contextlib.redirect_stdout(io.StringIO()), _onnxruntime_errors_only():
        quantize_static(
            str(source),
            str(out),
            FeedReader(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=list(excluded),
            per_channel=precision == "int8",
            activation_type=quant_type,
            weight_type=quant_type,
            calibrate_method=getattr(CalibrationMethod, METHODS[method][0]),
            # one run per collection (a stride of 1): prompts and KV caches differ in length from sample to sample,
            # and the histogram calibrators stack the outputs of one collection into one array
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "CalibStridedMinMax": 1},
            use_external_data_format=external_data,
            calibration_cache_path=ranges_cache,
        )
    return onnx.load(str(out))


@contextlib.contextmanager
def _onnxruntime_errors_only():
    """ONNX Runtime's default logger at error level for the block (its own default, warnings, after it), and its
    quantizer's advice to pre-process (symbolic shape inference and onnx's optimizer, which an export has had) kept
    off the root logger."""

    def not_advice(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(PREPROCESS_ADVICE)

    root = logging.getLogger()
    root.addFilter(not_advice)
    try:
        with default_logger_errors_only():
            yield
    finally:
        root.removeFilter(not_advice)


def activation_ranges(model: onnx.ModelProto, precision: str) -> dict[str, dict[str, float]]:
    """Per activation tensor quantized in ``model``: its scale and the range it covers (``amax = scale * qmax``)."""
    initializers = {init.name: init for init in model.graph.initializer}
    qmax = PRECISIONS[precision][1]
    ranges = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in initializers:
            continue
        scale = float(onnx.numpy_helper.to_array(initializers[node.input[1]]).reshape(-1)[0])
        ranges[node.input[0]] = {"scale": scale, "amax": scale * qmax}
    return dict(sorted(ranges.items()))
