"""SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language
Models", ICML 2023) folded into an fp32 export's weights before INT8/FP8 calibration (``calibrate --smooth ALPHA``).

A product ``X W`` equals ``(X / s) (s W)`` for any positive scale ``s_j`` per input channel ``j``. Where the division
folds into what makes ``X``, the graphs stay as they are and only weights change: a norm's scale (and shift) before
the products that read its output (Q, K and V; gate and up), or the up projection whose output a gated MLP multiplies
by act(gate) before its down projection. The activation's outlier channels move into the weights, which INT8
quantizes per output channel, so one per-tensor activation scale rounds less of what the product reads. SmoothQuant's
scale, ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (``max|W_j|`` over every product of the group), splits the
difficulty between the two by ``alpha``; the paper's default is 0.5.

The maxima ``max|X_j|`` come from the calibration feeds, pooled by product name over every graph that holds the
product (prefill per bucket, decode, text), so that each shared weight is smoothed once, the same way in each graph.
The smoothed graphs are written into a scratch folder under their own names, with their weights (smoothed or not) in
its own ``weights.data``: ONNX Runtime's quantizer loads a graph's weights through onnx, which refuses a weights file
with a second hard link, so the unchanged ones are copied too (one more copy of the quantized graphs' fp32 weights on
disk while calibrating). Ranges and quantization then read that folder instead of the source.

Not ONNX Runtime's own SmoothQuant (``quantize_static``'s ``extra_options={"SmoothQuant": True}``, through Intel
Neural Compressor): it smooths each graph it is given on that graph's calibration data alone, so the prefill and
decode graphs would get different weights where they share one, and it calibrates by itself, holding what
``luvc.calibration.ranges`` avoids.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import _get_all_tensors

from luvc.export.manifest import ExportManifest
from luvc.export.weights import SharedWeights
from luvc.runtime.exposed import session_with_outputs
from luvc.runtime.weights import MappedWeights

SCALE_LIMITS = (1e-5, 1e5)  # a channel's scale is clipped to these, so that no weight row vanishes or overflows
FOLD_DEPTH = 3  # how many nodes back from a product's input the fold target is looked for


@dataclasses.dataclass(frozen=True)
class Site:
    """An initializer as one node reads it: input ``index`` of node ``node``, its channels along ``axis``."""

    node: str
    index: int
    axis: int


@dataclasses.dataclass(frozen=True)
class SmoothingGroup:
    """The weight products that read one activation, smoothed with one scale per channel: each product's weight is
    multiplied by the scale along its input channels (``weights``), and what makes the activation is divided by it
    along its output channels (``folded``: a norm's scale and shift, an up projection's weight and bias)."""

    activation: str
    products: tuple[str, ...]  # node names, sorted
    weights: tuple[Site, ...]
    folded: tuple[Site, ...]
    channels: int

    @property
    def key(self) -> str:
        """The name the group is known by in every graph that holds it: its first product's."""
        return self.products[0]


class _Graph:
    """Who produces and who reads each tensor of a graph, and its initializers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        self.nodes = {node.name: node for node in model.graph.node}
        self.producer = {name: node for node in model.graph.node for name in node.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.outputs = {output.name for output in model.graph.output}

    def initializer_at(self, site: Site) -> onnx.TensorProto:
        """The initializer ``site`` reads."""
        return self.initializers[self.nodes[site.node].input[site.index]]

    def read_only_by(self, name: str, node: onnx.NodeProto) -> bool:
        """Whether ``node`` is the one reader of ``name``, once (and it is no graph output)."""
        readers = self.readers.get(name, [])
        return name not in self.outputs and len(readers) == 1 and readers[0] is node

    def matrix(self, name: str) -> list[int] | None:
        """The shape of ``name`` where it is a float32 2-D initializer, else ``None``."""
        tensor = self.initializers.get(name)
        if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) != 2:
            return None
        return list(tensor.dims)

    def vector(self, name: str, channels: int) -> bool:
        """Whether ``name`` is a float32 initializer of shape ``(channels,)``."""
        tensor = self.initializers.get(name)
        return tensor is not None and tensor.data_type == onnx.TensorProto.FLOAT and list(tensor.dims) == [channels]

    def product_weight(self, node: onnx.NodeProto) -> tuple[Site, int] | None:
        """A weight product's weight site and input channels: ``MatMul(x, W)`` (``W`` ``(K, N)``) or ``Gemm(x, W,
        b)`` (``W`` ``(N, K)`` with ``transB``), ``x`` an activation; else ``None``."""
        shape = self.matrix(node.input[1]) if len(node.input) >= 2 else None
        if shape is None or node.input[0] in self.initializers:
            return None
        if node.op_type == "MatMul":
            return Site(node.name, 1, 0), shape[0]
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or attributes.get("transA", 0):
            return None
        axis = 1 if attributes.get("transB", 0) else 0
        return Site(node.name, 1, axis), shape[axis]

    def folds_into(self, tensor: str, channels: int, depth: int = FOLD_DEPTH) -> tuple[Site, ...] | None:
        """The initializer sites that, divided by a per-channel scale, divide ``tensor`` by it along its last axis;
        ``None`` where what makes ``tensor`` is not linear in such initializers within ``depth`` nodes."""
        node = self.producer.get(tensor)
        if node is None or depth == 0:
            return None
        if node.op_type in ("MatMul", "Gemm"):
            return self._folds_into_product(node, channels)
        if node.op_type == "LayerNormalization":
            return self._folds_into_norm(node, channels)
        if node.op_type in ("Mul", "Add") and len(node.input) == 2:
            return self._folds_into_elementwise(node, channels, depth)
        return None

    def _folds_into_product(self, node: onnx.NodeProto, channels: int) -> tuple[Site, ...] | None:
        """An up projection (with its bias), before the gate's product: its weight's output columns and bias."""
        found = self.product_weight(node)
        if found is None:
            return None
        output_axis, shape = 1 - found[0].axis, self.matrix(node.input[1])
        if shape is None or shape[output_axis] != channels:
            return None
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and not self.vector(bias, channels):
            return None
        return (Site(node.name, 1, output_axis), *([Site(node.name, 2, 0)] if bias else []))

    def _folds_into_norm(self, node: onnx.NodeProto, channels: int) -> tuple[Site, ...] | None:
        """A LayerNorm over the last axis: its scale and shift."""
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        parts = [index for index in (1, 2) if len(node.input) > index and node.input[index]]
        if axis == -1 and all(self.vector(node.input[index], channels) for index in parts):
            return tuple(Site(node.name, index, 0) for index in parts)
        return None

    def _folds_into_elementwise(self, node: onnx.NodeProto, channels: int, depth: int) -> tuple[Site, ...] | None:
        """``x * gamma`` (RMSNorm's scale), ``x + beta`` (a shift, after its scale), or ``act(gate) * up``."""
        inputs = list(node.input)
        for index, (own, other) in enumerate((inputs, inputs[::-1])):
            if self.vector(own, channels):
                if node.op_type == "Mul":
                    return (Site(node.name, index, 0),)
                inner = self.folds_into(other, channels, depth - 1) if self.read_only_by(other, node) else None
                return None if inner is None else (*inner, Site(node.name, index, 0))
        if node.op_type != "Mul":
            return None
        for factor in inputs:  # act(gate) * up: dividing either factor divides the product
            if factor not in self.initializers and self.read_only_by(factor, node):
                inner = self.folds_into(factor, channels, depth - 1)
                if inner is not None:
                    return inner
        return None


def smoothing_groups(model: onnx.ModelProto, excluded: Sequence[str] = ()) -> list[SmoothingGroup]:
    """The groups of ``model``'s weight products (outside ``excluded``) whose shared input can be smoothed: nothing
    else reads it, and what makes it folds a per-channel scale."""
    graph, skip = _Graph(model), set(excluded)
    products: dict[str, list[tuple[str, Site, int]]] = {}  # activation -> (node, weight site, channels)
    for node in model.graph.node:
        found = graph.product_weight(node) if node.name not in skip else None
        if found is not None:
            products.setdefault(node.input[0], []).append((node.name, *found))
    groups = []
    for activation, readers in sorted(products.items()):
        readers.sort()
        names = [name for name, _, _ in readers]
        channels = {width for _, _, width in readers}
        if activation in graph.outputs or sorted(node.name for node in graph.readers.get(activation, [])) != names:
            continue  # another node reads the activation, and would see it divided
        folded = graph.folds_into(activation, channels.pop()) if len(channels) == 1 else None
        if folded is not None:
            sites = tuple(site for _, site, _ in readers)
            groups.append(SmoothingGroup(activation, tuple(names), sites, folded, readers[0][2]))
    return groups


def channel_maxima(
    graph_path: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    groups: Sequence[SmoothingGroup],
    weights: MappedWeights | None,
    maxima: dict[str, np.ndarray],
) -> None:
    """Run ``graph_path`` over ``feeds`` and fold each group's per-channel ``max|X_j|`` into ``maxima`` (by group
    key, so that the graphs that share a product share its maxima)."""
    if not groups:
        return
    activations = [group.activation for group in groups]
    with session_with_outputs(graph_path, activations, weights=weights, optimized=False) as run:
        for feed in feeds:
            values = run(feed)
            for group in groups:
                found = np.abs(values[group.activation]).reshape(-1, group.channels).max(axis=0)
                held = maxima.get(group.key)
                maxima[group.key] = found if held is None else np.maximum(held, found)


def smoothing_scales(activation_maxima: np.ndarray, weight_maxima: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel scale ``max|X_j|^alpha / max|W_j|^(1 - alpha)``, 1 where either is zero or not
    finite, clipped to ``SCALE_LIMITS`` (float64)."""
    activations, weights = np.asarray(activation_maxima, np.float64), np.asarray(weight_maxima, np.float64)
    usable = (activations > 0) & (weights > 0) & np.isfinite(activations) & np.isfinite(weights)
    scales = np.ones_like(activations)
    scales[usable] = activations[usable] ** alpha / weights[usable] ** (1 - alpha)
    return np.clip(scales, *SCALE_LIMITS)


@dataclasses.dataclass(frozen=True)
class SmoothedExport:
    """The smoothed fp32 graphs calibration reads instead of the source's (the same files as the source manifest
    names, in ``folder``), and the products smoothed."""

    folder: Path
    products: tuple[str, ...]


def smooth_export(
    source_dir: Path,
    manifest: ExportManifest,
    graphs: Sequence[str],
    feeds: Mapping[str, Sequence[dict[str, np.ndarray]]],
    excluded: Callable[[onnx.ModelProto], Sequence[str]],
    alpha: float,
    folder: Path,
    advance: Callable[[str], None],
) -> SmoothedExport:
    """Write ``graphs`` of the export in ``source_dir`` smoothed with strength ``alpha`` into ``folder``, each
    group's activation maxima measured over ``feeds`` (graph name -> feeds) and pooled over the graphs; ``excluded``
    gives a graph's products that stay float (not smoothed). The graphs keep their file names, and their weights,
    smoothed or copied, go into ``folder``'s own weights file (each distinct tensor once): the source manifest's graph
    entries name the smoothed folder's files as well."""
    structures = {
        name: onnx.load(str(source_dir / manifest.graphs[name].file), load_external_data=False) for name in graphs
    }
    grouped = {name: smoothing_groups(model, excluded(model)) for name, model in structures.items()}
    maxima: dict[str, np.ndarray] = {}
    weights = MappedWeights(source_dir)
    try:
        for name in graphs:
            channel_maxima(source_dir / manifest.graphs[name].file, feeds.get(name, ()), grouped[name], weights, maxima)
            advance(f"smoothing: channel maxima of {name}, {len(grouped[name])} product input(s)")
    finally:
        weights.close()
    shared = SharedWeights(folder)  # the export's file name: the graphs' manifest entries hold for this folder too
    scales: dict[str, np.ndarray] = {}
    smoothed: set[str] = set()
    for name in graphs:
        entry, model = manifest.graphs[name], structures.pop(name)
        groups = [group for group in grouped[name] if group.key in maxima]  # a graph no feed reached: none
        graph = _Graph(model)
        for group in groups:
            if group.key not in scales:  # from the source's weights: every graph smooths a group alike
                read = [(_read(graph.initializer_at(site), source_dir), site) for site in group.weights]
                weight_maxima = np.max([np.abs(value).max(axis=1 - site.axis) for value, site in read], axis=0)
                scales[group.key] = smoothing_scales(maxima[group.key], weight_maxima, alpha)
        store = shared if entry.external_data else None
        written = _scale_sites(model, graph, groups, scales, source_dir, store)
        if store is not None:  # the rest copied in chunks, each once
            for tensor in _get_all_tensors(model):
                if tensor.data_location == onnx.TensorProto.EXTERNAL and tensor.name not in written:
                    store.copy_external(tensor, source_dir)
        onnx.save_model(model, str(folder / entry.file))
        smoothed.update(product for group in groups for product in group.products)
        advance(f"smoothing: wrote {name}, {len(groups)} product input(s) smoothed")
    return SmoothedExport(folder, tuple(sorted(smoothed)))


def _scale_sites(
    model: onnx.ModelProto,
    graph: _Graph,
    groups: Sequence[SmoothingGroup],
    scales: Mapping[str, np.ndarray],
    source_dir: Path,
    store: SharedWeights | None,
) -> set[str]:
    """Scale ``model``'s initializers (``graph``: who reads what in it) for ``groups`` (in place): each product's
    weight multiplied by its group's scale along the input channels, each fold divided by it. A node input edited by
    two groups (an up projection's weight: rows for the norm before it, columns for the down projection after it) is
    written once. An initializer that other nodes read as well (the exporter stores equal tensors once) gets a copy
    for this reader. Returns the names of the tensors written."""
    edits: dict[tuple[str, int], list[tuple[int, np.ndarray, bool]]] = {}  # (node, input) -> (axis, scale, multiply)
    for group in groups:
        for site in group.weights:
            edits.setdefault((site.node, site.index), []).append((site.axis, scales[group.key], True))
        for site in group.folded:
            edits.setdefault((site.node, site.index), []).append((site.axis, scales[group.key], False))
    reads = collections.Counter({name: len(readers) for name, readers in graph.readers.items()})
    reads.update(graph.outputs)
    written = set()
    for (node_name, index), changes in sorted(edits.items(), key=lambda item: item[0]):
        node = graph.nodes[node_name]
        tensor = graph.initializers[node.input[index]]
        value = _read(tensor, source_dir).astype(np.float64)
        for axis, scale, multiply in changes:
            shape = [1] * value.ndim
            shape[axis] = -1
            value = value * scale.reshape(shape) if multiply else value / scale.reshape(shape)
        if reads[tensor.name] > 1:  # this reader's own copy
            reads[tensor.name] -= 1
            copy = model.graph.initializer.add()
            copy.name, copy.data_type = f"{tensor.name}/smoothed/{node_name}/{index}", tensor.data_type
            copy.dims.extend(tensor.dims)
            node.input[index] = copy.name
            tensor = copy
        _replace(tensor, value, store)
        written.add(tensor.name)
    return written


def _read(tensor: onnx.TensorProto, folder: Path) -> np.ndarray:
    """``tensor``'s value, its external bytes read from ``folder``."""
    return onnx.numpy_helper.to_array(tensor, str(folder))


def _replace(tensor: onnx.TensorProto, value: np.ndarray, shared: SharedWeights | None) -> None:
    """Give ``tensor`` the value ``value`` (its type and shape): into ``shared``'s file, or inline without one."""
    value = value.astype(np.float32, copy=False)
    if shared is None:
        tensor.CopyFrom(onnx.numpy_helper.from_array(value, tensor.name))
    else:
        shared.place(tensor, value)
