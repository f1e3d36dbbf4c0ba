"""What GPTQ needs of the calibration data: ``H = X^T X`` of each quantized linear layer's inputs ``X``.

The source export's graphs (fp32 or fp16) run on ONNX Runtime with the inputs of their weight ``MatMul``s exposed as
outputs, over the same feeds calibration collects (compression in the loop: the prefill sees merged and pruned
visual tokens). Layers that read one input (Q, K and V; gate and up) share one ``H``; the graphs that hold the same
layer (prefill per bucket, decode, text) add their inputs to the same ``H``, keyed by the ``MatMul``'s node name,
which every graph shares. The ``H`` are accumulated in passes over the graphs, as many layers per pass as
``memory_budget`` bytes of ``H`` hold, so that a 2B model's 8960-wide MLP inputs do not all sit in memory at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from luvc.calibration.weight_only import LM_HEAD, WeightProduct, weight_products
from luvc.runtime.exposed import session_with_outputs
from luvc.runtime.weights import MappedWeights

DEFAULT_MEMORY_BUDGET = 2 << 30  # bytes of float64 H held in one pass


@dataclasses.dataclass(frozen=True)
class HessianGraph:
    """One graph whose weight products GPTQ quantizes: its file, the calibration feeds it runs on, and the nodes it
    leaves in floating point."""

    path: Path
    feeds: Sequence[dict]
    excluded: Sequence[str] = ()


def _products(graph: HessianGraph) -> dict[str, WeightProduct]:
    """The graph's products GPTQ rounds, by node name (the LM head is INT8, rounded to nearest: not one of them)."""
    found = weight_products(onnx.load(str(graph.path), load_external_data=False), graph.excluded)
    return {name: product for name, product in found.items() if LM_HEAD not in name.lower()}


def _groups(products: Sequence[dict[str, WeightProduct]]) -> dict[tuple[str, ...], int]:
    """Each group of product nodes that read one input (sorted node names) -> its input channels, over every graph's
    ``products``, in graph order."""
    groups: dict[tuple[str, ...], int] = {}
    for found in products:
        readers: dict[str, list[str]] = {}
        for node, product in found.items():
            readers.setdefault(product.activation, []).append(node)
        for nodes in readers.values():
            groups.setdefault(tuple(sorted(nodes)), found[nodes[0]].input_channels)
    return groups


def plan_passes(
    graphs: Sequence[HessianGraph],
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    products: Sequence[dict[str, WeightProduct]] | None = None,
) -> list[list[tuple[str, ...]]]:
    """The groups of product nodes (see ``input_hessians``) in passes of at most ``memory_budget`` bytes of float64
    ``H`` each (one group at least); ``products``: each graph's, when already read."""
    passes: list[list[tuple[str, ...]]] = [[]]
    held = 0
    for group, channels in _groups(products or [_products(graph) for graph in graphs]).items():
        size = channels * channels * 8
        if passes[-1] and held + size > memory_budget:
            passes.append([])
            held = 0
        passes[-1].append(group)
        held += size
    return [chunk for chunk in passes if chunk]


def input_hessians(
    graphs: Sequence[HessianGraph],
    weights: MappedWeights | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    advance: Callable[[str], None] = lambda _: None,
) -> Mapping[str, np.ndarray]:
    """Product node name -> ``X^T X`` (float64, ``(K, K)``) of its inputs over every graph's feeds; the nodes of one
    group share one array. ``weights``: the export's ``MappedWeights``, so the sessions share its weights."""
    hessians: dict[str, np.ndarray] = {}
    products = [_products(graph) for graph in graphs]
    passes = plan_passes(graphs, memory_budget, products)
    for number, groups in enumerate(passes, start=1):
        wanted = {node: group for group in groups for node in group}
        sums: dict[tuple[str, ...], np.ndarray] = {}
        for graph, found in zip(graphs, products):
            inputs: dict[str, tuple[str, ...]] = {}  # activation -> its group in this pass
            for node, product in found.items():
                if node in wanted:
                    inputs[product.activation] = wanted[node]
            if not inputs:
                continue
            with session_with_outputs(graph.path, list(inputs), weights=weights) as run:
                for feeds in graph.feeds:
                    for activation, rows in run(feeds).items():
                        rows = np.asarray(rows, dtype=np.float64).reshape(-1, rows.shape[-1])
                        group = inputs[activation]
                        if group not in sums:
                            sums[group] = np.zeros((rows.shape[1], rows.shape[1]))
                        sums[group] += rows.T @ rows
        for group, total in sums.items():
            hessians.update(dict.fromkeys(group, total))
        advance(f"GPTQ inputs, pass {number} of {len(passes)}: {len(groups)} layer inputs")
    return hessians
