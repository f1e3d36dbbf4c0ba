"""Activation ranges for ONNX Runtime's static quantizer, collected with the export's weights held once.

``quantize_static`` calibrates by itself: it loads the graph with its weights, saves a copy with every input and
output of every MatMul, Gemm and Conv added as a graph output, opens a session on that copy (the weights a second and
third time) and keeps each run's outputs: calibrating a 2B model in float32 peaked at 21-23 GiB, and was killed for
memory on a 24 GiB machine. Here the same statistics are gathered as ONNX Runtime's calibrators gather
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

from luvc.calibration.quantize import QUANTIZED_OPS, calibration_method, constant_names
from luvc.calibration.tails import TailStatistics
from luvc.runtime.exposed import session_with_outputs
from luvc.runtime.weights import MappedWeights

# ONNX Runtime CalibrationMethod name -> its histogram settings (symmetric, num_bins, num_quantized_bins, percentile,
# scenario): ``create_calibrator``'s defaults with its calibrator classes', but for entropy. There ONNX Runtime's
# default is 128 histogram bins for 128 quantized bins, which leaves its KL search one candidate, the whole range
# (more only where later runs widened the histogram): "entropy" was mostly the absolute maximum. TensorRT's entropy
# calibration (Migacz, "8-bit Inference with TensorRT", GTC 2017) searches 2048 bins down to 128; MinMax keeps the
# extremes
HISTOGRAM_SETTINGS = {
    "Entropy": (False, 2048, 128, 99.999, "same"),
    "Percentile": (True, 2048, 2048, 99.999, "same"),
    "Distribution": (False, 2048, 2048, 99.999, "same"),
}


def histogram_collector(method: str, *settings):
    """ONNX Runtime's ``HistogramCollector`` for ``method`` with ``settings`` (``HISTOGRAM_SETTINGS``), its KL
    threshold search replaced by ``entropy_threshold``: the same search, vectorised per candidate threshold where
    ONNX Runtime loops over the quantized bins in Python (0.33 s a tensor at 2048 bins)."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector(method, *settings)
    collector.get_entropy_threshold = entropy_threshold
    return collector


class Extremes:
    """MinMax's statistics with ``HistogramCollector``'s interface: each tensor's minimum and maximum over every
    collection, as ONNX Runtime's ``MinMaxCalibrater`` keeps them (one-element arrays of the tensor's type)."""

    def __init__(self) -> None:
        self.lowest: dict[str, np.ndarray] = {}
        self.highest: dict[str, np.ndarray] = {}

    def collect(self, name_to_arr: dict[str, list[np.ndarray]]) -> None:
        for name, values in name_to_arr.items():
            for value in values:
                low, high = np.min(value, keepdims=True).reshape(-1), np.max(value, keepdims=True).reshape(-1)
                self.lowest[name] = np.minimum(self.lowest[name], low) if name in self.lowest else low
                self.highest[name] = np.maximum(self.highest[name], high) if name in self.highest else high

    def compute_collection_result(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {name: (self.lowest[name], self.highest[name]) for name in self.lowest}


def entropy_threshold(histogram: tuple, num_quantized_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(low, high)`` of ``histogram`` (ONNX Runtime's: counts, edges, min, max, threshold) whose
    ``num_quantized_bins`` quantization keeps the KL divergence from the data least, as
    ``HistogramCollector.get_entropy_threshold`` finds it: each candidate's distributions, smoothing and divergence
    are ONNX Runtime's own."""
    from onnxruntime.quantization.calibrate import entropy, smooth_distribution

    counts, edges, lowest, highest = histogram[0], histogram[1], histogram[2], histogram[3]
    bins, zero_bin, half = counts.size, counts.size // 2, num_quantized_bins // 2
    below = np.concatenate(([0], np.cumsum(counts)))  # below[k]: the count of the first k bins
    best, best_divergence = None, None
    for i in range(half, zero_bin + 1):
        start, end = zero_bin - i, min(zero_bin + i + 1, bins)
        sliced = counts[start:end]
        p = sliced.copy()
        p[0] += below[start]  # the outliers go to the edge bins
        p[-1] += below[bins] - below[end]
        merged = sliced.size // num_quantized_bins
        whole = num_quantized_bins * merged
        quantized = sliced[:whole].reshape(num_quantized_bins, merged).sum(axis=1)
        quantized[-1] += sliced[whole:].sum()
        occupied = (p[:whole] != 0).reshape(num_quantized_bins, merged).sum(axis=1)
        q = np.zeros(p.size, dtype=np.int64)  # each quantized bin spread over its occupied bins, truncated
        q[:whole] = np.repeat(np.where(occupied != 0, quantized / np.maximum(occupied, 1), 0), merged)
        p, q = smooth_distribution(p), smooth_distribution(q)
        divergence = np.inf if p is None or q is None else float(np.array(entropy(p, q), dtype=edges.dtype))
        if best_divergence is None or divergence < best_divergence:  # the first of equal minima, as argmin
            best, best_divergence = (edges[start], edges[end]), divergence
    if best is None:
        raise ValueError(f"a histogram of {bins} bins has no candidate range for {num_quantized_bins} quantized bins")
    low, high = best
    return (lowest if low < lowest else low), (highest if high > highest else high)


def activations_to_calibrate(model: onnx.ModelProto, excluded: Iterable[str]) -> list[str]:
    """The activation inputs (neither initializers nor constants) of ``model``'s products the quantizer quantizes
    (``QUANTIZED_OPS`` nodes not ``excluded``): every tensor it puts a QuantizeLinear on, node outputs staying float."""
    excluded, constants = set(excluded), constant_names(model)
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
) -> dict[str, TailStatistics]:
    """Run ``graph_path`` over ``feeds`` and write the ``method`` (``entropy``, ``minmax``, ...) ranges of
    ``tensors`` to ``cache``, in the format of ``quantize_static``'s ``calibration_cache_path``. Returns each
    tensor's tail statistics over the same runs (``luvc.calibration.tails``)."""
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    calibration = calibration_method(method)
    if not tensors:  # nothing quantized: an empty cache still spares quantize_static its own calibration
        save_tensors_data(TensorsData(calibration, {}), cache)
        return {}
    if calibration.name in HISTOGRAM_SETTINGS:
        collector = histogram_collector(calibration.name.lower(), *HISTOGRAM_SETTINGS[calibration.name])
    else:
        collector = Extremes()
    tails = {name: TailStatistics() for name in tensors}
    with (
        session_with_outputs(graph_path, list(tensors), weights=weights, optimized=False) as run,
        contextlib.redirect_stdout(io.StringIO()),  # the histogram collector prints its progress
    ):
        for feed in feeds:
            values = run(feed)
            collector.collect({name: [value] for name, value in values.items()})
            for name, value in values.items():
                tails[name].add(value)
        data = collector.compute_collection_result()
    save_tensors_data(TensorsData(calibration, data), cache)
    return tails
