"""Explicit quantization of one exported graph with ONNX Runtime's static Q/DQ quantizer.

Only weight GEMMs (MatMul, Gemm, Conv with an initializer input) are quantized, symmetrically, per tensor for
activations and per channel for weights, and only at their inputs: their outputs stay float. What stays in floating
point is recorded node by node: SPU scoring and selection, OIM merging, norm statistics and the LM head (by node
name), attention products of two activations (by their inputs), and at INT8 the products whose input the calibration
data show heavy tailed (``luvc.calibration.tails``).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping
from pathlib import Path

import onnx

from luvc.calibration.weight_only import LM_HEAD
from luvc.errors import critical
from luvc.export.naming import layer_name, place_of
from luvc.runtime.ort_logging import default_logger_errors_only

QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
# precision -> (ONNX Runtime QuantType name, largest quantized magnitude)
PRECISIONS = {
    "int8": ("QInt8", 127.0),
    "fp8": ("QFLOAT8E4M3FN", 448.0),
    "int4": ("QInt4", 7.0),
    "int8w": ("QInt8", 127.0),  # weight-only INT8 (W8A16)
}
# precisions that quantize weights only (``luvc.calibration.weight_only``): activations stay float, nothing is
# calibrated, and only the LLM's graphs change (their LM head too, at INT8)
WEIGHT_ONLY = frozenset({"int4", "int8w"})
# method -> ONNX Runtime CalibrationMethod name (None: no calibration), and the precisions it applies to
METHODS = {
    "minmax": ("MinMax", ("int8",)),
    "entropy": ("Entropy", ("int8",)),
    "percentile": ("Percentile", ("int8",)),
    "distribution": ("Distribution", ("fp8",)),
    "rtn": (None, ("int4", "int8w")),  # round to nearest: INT4 block-wise, INT8 per output column
    "gptq": (None, ("int4",)),  # GPTQ with the calibration inputs, block-wise (``luvc.calibration.hessians``)
}
# how ONNX Runtime's quantizer starts its advice to pre-process the model, printed twice per graph
PREPROCESS_ADVICE = ("Please consider to run pre-processing", "Please consider pre-processing")
# LUVC unit -> why its nodes stay in floating point
KEEP_UNITS_FLOAT = {"spu": "SPU scoring and selection", "oim": "OIM merge"}
# node-name fragment -> why the node stays in floating point
KEEP_FLOAT = {
    "norm": "norm statistics",
    LM_HEAD: "logits",
}


# the oldest ONNX Runtime whose quantize_static reads a calibration cache (``calibration_cache_path``), which is how
# the ranges collected by ``luvc.calibration.ranges`` reach it
MIN_ONNXRUNTIME = "1.27"
# precision -> the calibration method used when none is given
# INT8: the absolute maximum, as TensorRT-LLM's INT8 calibrates LLM activations (ModelOpt's "max"); on Qwen3-VL-2B's
# widths KL clipping (entropy) gave a worse worst-case logits cosine against fp32 (0.9818 against 0.9842)
DEFAULT_METHODS = {"int8": "minmax", "fp8": "distribution", "int4": "gptq", "int8w": "rtn"}


def check_onnxruntime(found: str | None = None) -> None:
    """Refuse an ONNX Runtime (``found``; default the installed one) older than ``MIN_ONNXRUNTIME``."""
    from packaging.version import Version

    if found is None:
        import onnxruntime

        found = onnxruntime.__version__
    if Version(found) < Version(MIN_ONNXRUNTIME):
        critical(
            f"calibrate needs onnxruntime {MIN_ONNXRUNTIME} or newer (its quantizer's calibration cache), found "
            f"{found}; run `pip install 'onnxruntime>={MIN_ONNXRUNTIME}'` (or onnxruntime-gpu)."
        )


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


def check_alpha(alpha: float | None, precision: str) -> None:
    """Refuse a migration strength outside (0, 1), or smoothing at a precision that quantizes no activation."""
    if alpha is None:
        return
    if isinstance(alpha, bool) or not 0 < alpha < 1:
        critical(f"--smooth {alpha}: a migration strength in (0, 1), e.g. 0.5 (SmoothQuant's default).")
    if precision not in ("int8", "fp8"):
        critical(f"--smooth moves activation outliers into weights; {precision} quantizes no activation. Leave it out.")


def constant_names(model: onnx.ModelProto) -> set[str]:
    """The initializers and ``Constant`` outputs of ``model``: what is not an activation."""
    names = {init.name for init in model.graph.initializer}
    return names | {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}


def excluded_nodes(
    model: onnx.ModelProto, precision: str, heavy_tailed: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Nodes kept in floating point at ``precision``, with the reason: LUVC units, norms, the LM head (but at a
    weight-only precision), activation-by-activation MatMuls (attention scores and context), and the products the
    calibration data found ``heavy_tailed`` (node name -> reason, ``luvc.calibration.tails``)."""
    weights, heavy_tailed = constant_names(model), heavy_tailed or {}
    by_name = dict(KEEP_FLOAT)
    if precision in WEIGHT_ONLY:  # the LM head's weight is INT8 (``luvc.calibration.weight_only.LM_HEAD``)
        by_name.pop(LM_HEAD)
    excluded = {}
    for node in model.graph.node:
        unit = _unit_of(node)
        reason = KEEP_UNITS_FLOAT.get(unit) if unit else None
        reason = reason or next((why for fragment, why in by_name.items() if fragment in node.name.lower()), None)
        reason = reason or heavy_tailed.get(node.name)
        if reason is None and node.op_type in QUANTIZED_OPS and not any(name in weights for name in node.input[:2]):
            reason = "attention product of two activations"
        if reason is not None:
            excluded[node.name] = reason
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


def quantize_graph(
    source: Path,
    out: Path,
    ranges: Path,
    precision: str,
    method: str,
    excluded: list[str],
    external_data: bool = False,
) -> onnx.ModelProto:
    """Write the Q/DQ version of ``source`` to ``out`` (weights beside it with ``external_data``, as graphs over 2 GB
    need), from the activation ranges in ``ranges`` (``luvc.calibration.ranges.collect_ranges``; a graph quantized
    again with more nodes excluded calibrates nothing); return it with its weights loaded. Only the inputs of the
    quantized products are quantized (weights per channel for INT8, activations per tensor); their outputs stay
    float."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    check_method(precision, method)
    quant_type = getattr(QuantType, PRECISIONS[precision][0])
    # the quantizer prints, and advises pre-processing (which an export has had)
    with contextlib.redirect_stdout(io.StringIO()), _onnxruntime_errors_only():
        quantize_static(
            str(source),
            str(out),
            None,  # no calibration data: the ranges are read from the cache
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=list(excluded),
            per_channel=precision == "int8",
            activation_type=quant_type,
            weight_type=quant_type,
            calibrate_method=calibration_method(method),
            # a product's output stays float: quantizing it too would round what the residual stream adds to 8
            # bits per tensor for no faster kernel (ONNX Runtime's CPU and TensorRT take Q/DQ on the inputs)
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
            },
            use_external_data_format=external_data,
            calibration_cache_path=ranges,
        )
    return onnx.load(str(out))


def calibration_method(method: str):
    """ONNX Runtime's ``CalibrationMethod`` for ``method`` (``entropy``, ``minmax``, ...)."""
    from onnxruntime.quantization import CalibrationMethod

    name = METHODS[method][0]
    if name is None:
        critical(f"--method {method} runs no ONNX Runtime calibrator.")
    return getattr(CalibrationMethod, name)


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
