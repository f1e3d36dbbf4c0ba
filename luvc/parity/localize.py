"""Localisation: expose each layer's output in an exported graph and find the first layer that diverges.

A layer's output is the last tensor produced by the nodes of its name prefix (``/vision/blocks.{i}/``,
``/llm/layers.{i}/``, LUVC units excluded) that is consumed outside it and has the shape PyTorch's layer output
has. The graph is loaded with those tensors added as outputs (in memory; external data is read from the export
folder) and run on ONNX Runtime with the feeds the pipeline made.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from luvc.export.naming import place_of, place_of_layer
from luvc.parity.metrics import cosine, relative_error
from luvc.parity.results import LayerError
from luvc.runtime.ort_session import DISABLED_OPTIMIZERS
from luvc.runtime.weights import MappedWeights


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


def run_with_outputs(
    graph_path: Path,
    outputs: Sequence[str],
    feeds: dict,
    basic_optimizations: bool = False,
    weights: MappedWeights | None = None,
) -> dict:
    """Run ``graph_path`` on ONNX Runtime CPU with ``outputs`` added as graph outputs; returns those tensors.
    ``basic_optimizations``: as the runtime's ``OrtSession`` for FP8 Q/DQ graphs; ``weights``: the external weights
    as the pipeline's sessions get them (held once across calls)."""
    with session_with_outputs(graph_path, outputs, basic_optimizations, weights) as run:
        return run(feeds)


@contextlib.contextmanager
def session_with_outputs(
    graph_path: Path,
    outputs: Sequence[str],
    basic_optimizations: bool = False,
    weights: MappedWeights | None = None,
) -> Iterator[Callable[[dict], dict]]:
    """One ONNX Runtime CPU session of ``graph_path`` with ``outputs`` as its outputs (see ``run_with_outputs``),
    as a function of the feeds that returns those tensors by name."""
    import onnxruntime as ort

    model = only_outputs(onnx.load(str(graph_path), load_external_data=False), outputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # as the runtime's sessions: no per-run warnings on the terminal
    if basic_optimizations:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if weights is not None:
        serialized, shared = weights.session_model(model, options)
    else:  # external data still resolves in the export folder: the edited graph is never written to disk
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(graph_path.parent))
        serialized, shared = model.SerializeToString(), []
    session = ort.InferenceSession(
        serialized, options, providers=["CPUExecutionProvider"], disabled_optimizers=list(DISABLED_OPTIMIZERS)
    )
    try:
        yield lambda feeds: dict(zip(outputs, session.run(list(outputs), feeds)))
    finally:
        session = None  # released before the shared values it uses
        del shared


def only_outputs(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """``model`` (in place) with ``outputs`` as its only outputs, without the nodes and initializers they do not need
    (e.g. the LM head, when only layer outputs are asked for); every input stays, so the same feeds apply."""
    graph = model.graph
    producers = {name: node for node in graph.node for name in node.output}
    needed, stack = set(), list(outputs)
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        if name in producers:
            stack.extend(source for source in producers[name].input if source)
    nodes = [node for node in graph.node if any(name in needed for name in node.output)]
    initializers = [tensor for tensor in graph.initializer if tensor.name in needed]
    del graph.node[:], graph.initializer[:], graph.output[:]
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)
    return model


def layer_errors(
    references: dict[str, np.ndarray], candidates: dict[str, list[str]], values: dict[str, np.ndarray]
) -> list[LayerError]:
    """Each layer's error: its last candidate tensor whose shape equals the reference activation's."""
    errors = []
    for layer, reference in references.items():
        matching = [values[name] for name in candidates.get(layer, []) if values[name].shape == reference.shape]
        if matching:
            actual = matching[-1]
            errors.append(LayerError(layer, relative_error(actual, reference), cosine(actual, reference)))
    return errors
