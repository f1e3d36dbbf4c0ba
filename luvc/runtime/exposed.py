"""Intermediate tensors of an exported graph: the graph loaded with chosen tensors as its only outputs (in memory;
external data is read from the export folder or handed out by ``MappedWeights``) and run on ONNX Runtime CPU with the
feeds the pipeline made. Parity's localisation reads layer outputs this way, GPTQ calibration each layer's inputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import onnx

from luvc.runtime.ort_opening import DISABLED_OPTIMIZERS
from luvc.runtime.weights import MappedWeights


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
    *,
    optimized: bool = True,
) -> Iterator[Callable[[dict], dict]]:
    """One ONNX Runtime CPU session of ``graph_path`` with ``outputs`` as its outputs (see ``run_with_outputs``),
    as a function of the feeds that returns those tensors by name. ``optimized=False``: no graph optimization at all,
    as ONNX Runtime's own calibrators run."""
    import onnxruntime as ort

    model = only_outputs(onnx.load(str(graph_path), load_external_data=False), outputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # as the runtime's sessions: no per-run warnings on the terminal
    if basic_optimizations:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
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
