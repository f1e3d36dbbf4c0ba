"""Heavy-tailed product inputs, found in the calibration data: the products INT8 keeps in floating point because one
static per-tensor scale would round away too much of what they read.

A symmetric quantizer with step ``amax / qmax`` adds rounding noise of rms ``step / sqrt(12)``: relative to the
input's own rms, ``(amax / rms) / (qmax * sqrt(12))``, 1% at ``amax / rms`` = 4.4 for INT8. Measured over calibration
feeds at real widths (random weights, docs/calibration.md): every gated MLP's down projection reads SiLU(gate) x up at
18-24x its rms (4-5% rounding error; 28 such layers took Qwen3-VL-2B's logits cosine to 0.984), every other product
at most 9x (2%). The bound, 12x (2.7%), keeps the first kind float by what the data show, whatever the family names
its modules. FP8's exponent holds the tails, and the weight-only precisions quantize no activation: no bound there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
import onnx

# precision -> the largest amax / rms a product's input may have and still be quantized
TAIL_BOUNDS = {"int8": 12.0}
HEAVY_TAILED = "heavy-tailed input"  # how the reason of a product kept float by this rule starts


@dataclasses.dataclass
class TailStatistics:
    """The absolute maximum and the mean square of an activation over every calibration feed."""

    amax: float = 0.0
    sum_of_squares: float = 0.0
    count: int = 0

    def add(self, values: np.ndarray) -> None:
        """Take one more run's values of the activation."""
        wide = values.astype(np.float64, copy=False)
        self.amax = max(self.amax, float(np.abs(wide).max(initial=0.0)))
        self.sum_of_squares += float(np.square(wide).sum())
        self.count += wide.size

    def merge(self, other: TailStatistics) -> None:
        """Pool ``other``'s values into these (the same product seen in another graph)."""
        self.amax = max(self.amax, other.amax)
        self.sum_of_squares += other.sum_of_squares
        self.count += other.count

    @property
    def ratio(self) -> float:
        """``amax / rms``: how far the largest value stands above the typical one (0 for an all-zero input)."""
        rms = (self.sum_of_squares / self.count) ** 0.5 if self.count else 0.0
        return self.amax / rms if rms > 0 else 0.0


def pool_by_product(
    model: onnx.ModelProto,
    products: Iterable[str],
    per_tensor: Mapping[str, TailStatistics],
    pooled: dict[str, TailStatistics],
) -> None:
    """Add each activation's statistics in ``per_tensor`` to every node of ``products`` that reads it, in ``pooled``
    (by node name, so that the prefill and decode graphs, which share their weights, keep the same products float)."""
    products = set(products)
    for node in model.graph.node:
        if node.name not in products:
            continue
        for name in node.input:
            if name in per_tensor:
                pooled.setdefault(node.name, TailStatistics()).merge(per_tensor[name])


def heavy_tailed_products(excluded_nodes: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The products kept float by this rule in any graph of a manifest's ``excluded_nodes``, by node name."""
    return sorted(
        {node for nodes in excluded_nodes.values() for node, why in nodes.items() if why.startswith(HEAVY_TAILED)}
    )


def heavy_tailed_nodes(pooled: Mapping[str, TailStatistics], precision: str) -> dict[str, str]:
    """The products whose input is heavier tailed than ``precision``'s bound (``TAIL_BOUNDS``), each with the reason it
    stays float: its ratio and the bound, as the manifest records it."""
    bound = TAIL_BOUNDS.get(precision)
    if bound is None:
        return {}
    return {
        node: f"{HEAVY_TAILED}: amax {stats.ratio:.1f}x its rms (bound {bound:g}x)"
        for node, stats in sorted(pooled.items())
        if stats.ratio > bound
    }
