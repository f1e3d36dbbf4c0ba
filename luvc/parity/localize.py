"""Localisation: expose each layer's output in an exported graph and find the first layer that diverges.

A layer's output is the last tensor produced by the nodes of its name prefix (``/vision/blocks.{i}/``,
``/llm/layers.{i}/``, LUVC units excluded) that is consumed outside it and has the shape PyTorch's layer output
has. The graph runs with those tensors as its outputs (``luvc.runtime.exposed``) on the feeds the pipeline made.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from luvc.export.naming import place_of, place_of_layer
from luvc.parity.metrics import cosine, relative_error
from luvc.parity.results import LayerError


def layer_candidates(model: onnx.ModelProto, layers: Sequence[str]) -> dict[str, list[str]]:
    """For each layer name (``vision.blocks.0`` ...), the tensors its nodes produce that nodes outside it consume,
    in topological order."""
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    candidates = {}
    for layer in layers:
        wanted = place_of_layer(layer)

        def inside(node_name: str) -> bool:
            return place_of(node_name) == wanted  # noqa: B023 (the layer's own nodes, its LUVC unit excluded)

        found = []
        for node in model.graph.node:
            if inside(node.name):
                found += [out for out in node.output if any(not inside(c) for c in consumers.get(out, []))]
        if found:
            candidates[layer] = found
    return candidates


def layer_errors(
    references: dict[str, np.ndarray], candidates: dict[str, list[str]], values: dict[str, np.ndarray]
) -> list[LayerError]:
    """Each layer's error: its last candidate tensor whose shape equals the reference activation's, or whose token
    axis (1) is longer: a prefill that ran at a length of its own (a hybrid model's) holds each prompt's tokens first,
    then padding."""
    errors = []
    for layer, reference in references.items():
        found = (_tokens_of(values[name], reference.shape) for name in candidates.get(layer, []))
        matching = [value for value in found if value is not None]
        if matching:
            actual = matching[-1]
            errors.append(LayerError(layer, relative_error(actual, reference), cosine(actual, reference)))
    return errors


def _tokens_of(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``value`` as a tensor of ``shape``: itself, its first ``shape[1]`` tokens where only its token axis is longer,
    or ``None``."""
    if value.shape == shape:
        return value
    same_rank = value.ndim == len(shape) > 1
    if same_rank and value.shape[1] > shape[1] and value.shape[:1] + value.shape[2:] == shape[:1] + shape[2:]:
        return value[:, : shape[1]]
    return None
