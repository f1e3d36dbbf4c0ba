"""Activation ranges for ONNX Runtime's static quantizer, collected with the export's weights held once.

``quantize_static`` calibrates by itself: it loads the graph with its weights, saves a copy with every input and
output of every MatMul, Gemm and Conv added as a graph output, opens a session on that copy (the weights a second and
third time) and keeps each run's outputs. For a 2B model's prefill graph in float32 that was more than 22 GiB, which
killed calibration on a 24 GiB machine. Here the same statistics are gathered as ONNX Runtime's calibrators gather
them (``HistogramCollector`` for entropy, percentile and distribution, the minimum and maximum for minmax, optimizers
off, one run per collection), over only the activations the quantizer reads (the activation inputs of the nodes it
quantizes), in a session that gets the weights from ``MappedWeights``, and written as ONNX Runtime's calibration
cache, which ``quantize_static`` reads instead of calibrating.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx

from luvc.calibration.quantize import QUANTIZED_OPS, calibration_method
from luvc.runtime.exposed import session_with_outputs
from luvc.runtime.weights import MappedWeights

# ONNX Runtime CalibrationMethod name -> its histogram settings there (``create_calibrator``'s defaults with its
# calibrator classes'): (symmetric, num_bins, num_quantized_bins, percentile, scenario); MinMax keeps the extremes
HISTOGRAM_SETTINGS = {
    "Entropy": (False, 128, 128, 99.999, "same"),
    "Percentile": (True, 2048, 2048, 99.999, "same"),
    "Distribution": (False, 2048, 2048, 99.999, "same"),
}


def activations_to_calibrate(model: onnx.ModelProto, excluded: Iterable[str]) -> list[str]:
    """The activation inputs (neither initializers nor constants) of ``model``'s products the quantizer quantizes
    (``QUANTIZED_OPS`` nodes not ``excluded``): every tensor it puts a QuantizeLinear on, node outputs staying float."""
    excluded = set(excluded)
    constants = {tensor.name for tensor in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    found = {
        name
        for node in model.graph.node
        if node.op_type in QUANTIZED_OPS and node.name not in excluded
        for name in node.input
        if name and name not in constants
    }
    return sorted(found)


def collect_ranges(
    graph_path: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    method: str,
    tensors: Sequence[str],
    cache: Path,
    weights: MappedWeights | None = None,
) -> None:
    """Run ``graph_path`` over ``feeds`` and write the ``method`` (``entropy``, ``minmax``, ...) ranges of
    ``tensors`` to ``cache``, in the format of ``quantize_static``'s ``calibration_cache_path``."""
    from onnxruntime.quantization.calibrate import HistogramCollector, TensorsData, save_tensors_data

    method = calibration_method(method)
    if not tensors:  # nothing quantized: an empty cache still spares quantize_static its own calibration
        save_tensors_data(TensorsData(method, {}), cache)
        return
    histograms = None
    if method.name in HISTOGRAM_SETTINGS:
        symmetric, num_bins, num_quantized_bins, percentile, scenario = HISTOGRAM_SETTINGS[method.name]
        histograms = HistogramCollector(
            method.name.lower(), symmetric, num_bins, num_quantized_bins, percentile, scenario
        )
    lowest: dict[str, np.ndarray] = {}
    highest: dict[str, np.ndarray] = {}
    with (
        session_with_outputs(graph_path, list(tensors), weights=weights, optimized=False) as run,
        contextlib.redirect_stdout(io.StringIO()),  # the histogram collector prints its progress
    ):
        for feed in feeds:
            values = run(feed)
            if histograms is not None:
                histograms.collect({name: [value] for name, value in values.items()})
                continue
            for name, value in values.items():
                low, high = np.min(value, keepdims=True).reshape(-1), np.max(value, keepdims=True).reshape(-1)
                lowest[name] = low if name not in lowest else np.minimum(lowest[name], low)
                highest[name] = high if name not in highest else np.maximum(highest[name], high)
        if histograms is not None:
            data = histograms.compute_collection_result()
        else:
            data = {name: (lowest[name], highest[name]) for name in lowest}
    save_tensors_data(TensorsData(method, data), cache)
