"""Layers kept in floating point in an export already quantized whole, without quantizing again, and the search
for the fewest of them that reach a target agreement.

``--target-agreement`` measures many candidate exports that differ from the fully quantized one only in which layers
stay float. ``quantize_static`` for each would quantize every weight of every graph again (minutes per candidate at
3B widths). Here the fully quantized export is written once (``FloatLayerTrials``), and a candidate is each graph
that holds one of its layers, edited: the layer's products read their float inputs again (the source graph's node
inputs, by node name), their float weights are read in place from the source export's weights file (hard-linked
beside the full quantization), and the Q/DQ nodes and quantized weights nothing reads any more are dropped. Every
other tensor stays where the full quantization put it, so a candidate writes its graphs only. ``quantize_static``
with those nodes excluded gives the same graph but for node order (tested against it); the chosen candidate is
written out as the calibrated export (``FloatLayerTrials.save``).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import onnx
from onnx.external_data_helper import _get_all_tensors, load_external_data_for_tensor

from luvc.calibration.quantize import QUANTIZED_OPS, activation_ranges, layer_exclusions, layer_of, quantized_layers
from luvc.calibration.verify import ReferenceRun, agreement_with_reference, worst_cosine
from luvc.errors import critical
from luvc.export.manifest import WEIGHTS_FILE, ExportManifest
from luvc.export.naming import place_of_layer
from luvc.export.weights import SharedWeights
from luvc.samples import Sample

TRIAL_PREFIX = "trial-"  # a candidate's graphs and weights file, beside the fully quantized export's


def restore_float(
    quantized: onnx.ModelProto,
    source: onnx.ModelProto,
    source_dir: Path,
    layers: Iterable[str],
    aliases: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """``quantized`` (in place, and returned) with the products of ``layers`` reading what they read in ``source``
    (the float graph, loaded without its external data, whose weights are in ``source_dir``), and nodes and
    initializers that nothing reads any more removed. The float weights they need are copied in, or, where
    ``aliases`` names their file, referenced in place under the alias (a link to the source's file beside
    ``quantized``'s), which copies nothing."""
    layers = set(layers)
    originals = {node.name: node for node in source.graph.node}
    source_initializers = {tensor.name: tensor for tensor in source.graph.initializer}
    present = {tensor.name for tensor in quantized.graph.initializer}
    for node in quantized.graph.node:
        if node.op_type not in QUANTIZED_OPS or layer_of(node) not in layers or node.name not in originals:
            continue
        del node.input[:]
        node.input.extend(originals[node.name].input)
        for name in node.input:
            if name in source_initializers and name not in present:
                quantized.graph.initializer.append(_float_copy(source_initializers[name], source_dir, aliases or {}))
                present.add(name)
    _remove_unread(quantized.graph)
    return quantized


def _relocate(tensor: onnx.TensorProto, location: str, alias: str) -> None:
    """Point ``tensor``'s external data at file ``alias`` where it names ``location``."""
    for entry in tensor.external_data:
        if entry.key == "location" and entry.value == location:
            entry.value = alias


def _float_copy(tensor: onnx.TensorProto, folder: Path, aliases: Mapping[str, str]) -> onnx.TensorProto:
    """A copy of ``tensor``: pointing at the alias of its external file where ``aliases`` has one, else holding its
    bytes (read from ``folder`` if they are external)."""
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    location = next((entry.value for entry in copy.external_data if entry.key == "location"), None)
    if location is not None and location in aliases:
        _relocate(copy, location, aliases[location])
    elif copy.data_location == onnx.TensorProto.EXTERNAL:
        load_external_data_for_tensor(copy, str(folder))
        copy.data_location = onnx.TensorProto.DEFAULT
        del copy.external_data[:]
    return copy


def _remove_unread(graph: onnx.GraphProto) -> None:
    """Drop the nodes none of whose outputs is read (by a node or as a graph output), until none is left, then the
    initializers no node reads."""
    outputs = {output.name for output in graph.output}
    while True:
        read = outputs | {name for node in graph.node for name in node.input}
        unread = [node for node in graph.node if not any(name in read for name in node.output if name)]
        if not unread:
            break
        for node in unread:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input} | outputs
    kept = [tensor for tensor in graph.initializer if tensor.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)


@dataclasses.dataclass
class FloatLayerTrials:
    """Candidates made from the fully quantized export in ``folder`` (manifest ``quantized``) of the float export in
    ``source_dir`` (manifest ``source``): ``write(layers)`` writes the graphs that hold one of ``layers`` with those
    layers float, beside the full export's files, and returns the manifest a pipeline opens the candidate with. Each
    candidate replaces the one before it."""

    source_dir: Path
    source: ExportManifest
    folder: Path
    quantized: ExportManifest
    graph_layers: Mapping[str, frozenset[str]]  # graph name -> the quantized layers it holds
    excluded: Mapping[str, Mapping[str, str]]  # graph name -> its nodes the full quantization keeps float, and why

    def write(self, layers: frozenset[str]) -> ExportManifest:
        """The candidate with ``layers`` in floating point (the full quantization where ``layers`` is empty)."""
        from luvc.export.exporter import save_model

        weights_file = self.folder / f"{TRIAL_PREFIX}weights.data"
        weights_file.unlink(missing_ok=True)
        weights = SharedWeights(self.folder, weights_file.name)
        graphs = dict(self.quantized.graphs)
        for name, held in self.graph_layers.items():
            if not held & layers:
                continue
            entry = self.quantized.graphs[name]
            model = onnx.load(str(self.folder / entry.file), load_external_data=False)
            source = onnx.load(str(self.source_dir / self.source.graphs[name].file), load_external_data=False)
            restore_float(model, source, self.source_dir, held & layers, self._source_aliases())
            # the float weights are the source's, in place: only the graph (and inline tensors) are written
            written = save_model(model, self.folder / f"{TRIAL_PREFIX}{entry.file}", bool(entry.external_data), weights)
            graphs[name] = dataclasses.replace(entry, file=written[0], external_data=tuple(written[1:]))
        return dataclasses.replace(self.quantized, graphs=graphs)

    def _source_aliases(self) -> dict[str, str]:
        """The source export's external-data files -> hard links to them in this folder (made once; a copy where
        the folders are on different file systems), so that a candidate's float weights are read from the source's
        files in place. Not symbolic links: ONNX Runtime refuses external data that resolves outside the folder."""
        aliases = {}
        for location in self.source.weights_files:
            alias = self.folder / f"{TRIAL_PREFIX}source-{location}"
            if not alias.exists():
                try:
                    os.link(self.source_dir / location, alias)
                except OSError:
                    shutil.copyfile(self.source_dir / location, alias)
            aliases[location] = alias.name
        return aliases

    def save(self, layers: frozenset[str], staging: Path, weights: SharedWeights, precision: str):
        """Write the candidate with ``layers`` float as an export's graphs into ``staging``, their weights into its
        shared ``weights`` file (each tensor copied from this folder once): the one quantization serves the export
        too. Returns the graph entries, each quantized graph's activation ranges, and its nodes kept float with the
        reason, as ``CalibratedExport._write_graphs`` does."""
        from luvc.export.exporter import save_model

        candidate = self.write(layers)
        # the full quantization's weights file has the name of the export's: its tensors are read under an alias
        alias = self.folder / f"{TRIAL_PREFIX}full-{WEIGHTS_FILE}"
        if not alias.exists():
            alias.symlink_to(WEIGHTS_FILE)
        entries, ranges, excluded = {}, {}, {}
        for name, graph in self.source.graphs.items():
            model = onnx.load(str(self.folder / candidate.graphs[name].file), load_external_data=False)
            for tensor in _get_all_tensors(model):  # as SharedWeights walks them (initializers, constants)
                _relocate(tensor, WEIGHTS_FILE, alias.name)
            written = save_model(model, staging / graph.file, bool(graph.external_data), weights, self.folder)
            entry = dataclasses.replace(self.quantized.graphs[name], file=graph.file, external_data=tuple(written[1:]))
            if name in self.graph_layers:
                source = onnx.load(str(self.source_dir / graph.file), load_external_data=False)
                entry = dataclasses.replace(entry, num_nodes=len(model.graph.node))
                ranges[name] = activation_ranges(model, precision)
                # a product the full quantization kept float keeps its own reason (a heavy-tailed input)
                excluded[name] = {**layer_exclusions(source, layers), **self.excluded[name]}
            entries[name] = entry
        return entries, ranges, excluded

    def extra_float_bytes(self, layers: Iterable[str]) -> dict[str, int]:
        """Per layer of ``layers``: the bytes its products' weights take in the source's floating point beyond
        INT8's one byte each (counted once however many graphs hold a product), but those the full quantization kept
        float already (a heavy-tailed input's)."""
        sizes: dict[str, dict[str, int]] = {layer: {} for layer in layers}
        for name in self.graph_layers:
            source = onnx.load(str(self.source_dir / self.source.graphs[name].file), load_external_data=False)
            initializers = {tensor.name: tensor for tensor in source.graph.initializer}
            for node in source.graph.node:
                layer = layer_of(node) if node.op_type in QUANTIZED_OPS else None
                weights = [initializers[i] for i in node.input[1:2] if i in initializers]
                if layer in sizes and weights and node.name not in self.excluded.get(name, {}):
                    tensor = weights[0]
                    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
                    sizes[layer][node.name] = math.prod(tensor.dims) * (itemsize - 1)
        return {layer: sum(products.values()) for layer, products in sorted(sizes.items())}


def graph_layers(folder: Path, manifest: ExportManifest, graphs: Iterable[str], excluded: Mapping) -> dict:
    """Graph name -> the layers of it whose products are quantized (``excluded``: graph -> nodes kept float)."""
    found = {}
    for name in graphs:
        model = onnx.load(str(folder / manifest.graphs[name].file), load_external_data=False)
        found[name] = frozenset(quantized_layers(model, excluded.get(name, {})))
    return found


@dataclasses.dataclass(frozen=True)
class FloatLayerChoice:
    """What ``--target-agreement`` chose: the layers kept in floating point, the sensitivity of each layer the search
    measured alone (the worst logits cosine gained by keeping it alone float), the cosine of the full quantization,
    the bytes each kept layer's weights take beyond INT8, and the search's wall time in seconds."""

    layers: frozenset[str] = frozenset()
    sensitivity: dict[str, float] = dataclasses.field(default_factory=dict)
    fully_quantized: float | None = None
    extra_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: float | None = None

    def manifest_fields(self) -> dict:
        """The ``QuantizationEntry`` fields that record the choice."""
        return {
            "fully_quantized_cosine": self.fully_quantized,
            "float_layers": tuple(sorted(self.layers)),
            "layer_sensitivity": self.sensitivity,
            "float_layer_bytes": self.extra_bytes,
            "target_search_seconds": self.seconds,
        }


def candidate_agreement(
    trials: FloatLayerTrials, samples: Sequence[Sample], references: Sequence[ReferenceRun], keep: frozenset[str]
) -> float:
    """The worst logits cosine against the float export, first token and greedy decode steps, of the candidate with
    ``keep`` layers in floating point."""
    from luvc.runtime.pipeline import Pipeline

    pipeline = Pipeline(trials.folder, manifest=trials.write(keep))
    try:
        return worst_cosine(agreement_with_reference(references, pipeline, samples, target=None))
    finally:
        pipeline.release()


def _layer_order(layer: str) -> tuple[str, int]:
    place = place_of_layer(layer)
    return place.stack, place.index


def search_float_layers(
    trials: FloatLayerTrials,
    samples: Sequence[Sample],
    references: Sequence[ReferenceRun],
    target: float,
    advance: Callable[[str], None],
) -> FloatLayerChoice:
    """The fewest layers to keep in floating point for a worst logits cosine of ``target`` (``choose_float_layers``),
    each candidate measured by running the samples through it (``candidate_agreement``)."""
    layers = set().union(*trials.graph_layers.values())
    choice = choose_float_layers(
        layers, lambda keep: candidate_agreement(trials, samples, references, keep), target, advance
    )
    return dataclasses.replace(choice, extra_bytes=trials.extra_float_bytes(choice.layers))


def choose_float_layers(
    layers: Iterable[str], measure: Callable[[frozenset[str]], float], target: float, advance: Callable[[str], None]
) -> FloatLayerChoice:
    """The layers to keep in floating point for ``measure`` (the worst logits cosine of the export with the given
    layers float) to reach ``target``, found best first without measuring every layer alone.

    A group's *gain* is the cosine it adds to the full quantization's when it alone is float. Starting from one group
    per layer stack (the last stack's gain inferred from every layer float), the group of the largest gain per layer
    is split in two halves in layer order: the first half is measured, the second's gain inferred as the group's
    less it (gains add, to first order). Per layer, so that a stack whose gain is spread thin over many layers waits
    behind a few layers that hold theirs. A single layer on top whose gain was inferred is measured alone first
    (inference carries its group's noise); one whose gain was measured is tried with the layers kept so far, and
    kept if they then do better (SPU's selection can make gains not add). This stops when the kept layers reach
    ``target``: about ``2 log2(layers)`` candidates per layer kept, where measuring each layer alone took one per
    layer. A large group hiding one big gain among many small ones waits behind smaller groups of higher gain per
    layer, and may cost a layer more than the fewest. The sensitivities recorded are the single layers' measured
    gains. A target not reached with every layer float, or not found, is refused."""
    full = measure(frozenset())
    advance(f"fully quantized: logits cosine {full:.6f} (target {target})")
    if full >= target:
        return FloatLayerChoice(fully_quantized=full)
    ordered = sorted(layers, key=_layer_order)
    everything = measure(frozenset(ordered))
    advance(f"every layer float: logits cosine {everything:.6f}")
    if everything < target:
        critical(
            f"--target-agreement {target}: not reached even with every layer in floating point (logits cosine "
            f"{everything:.6f}, fully quantized {full:.6f}); lower the target, calibrate with more samples (--data) "
            "or another --method."
        )
    stacks = [list(group) for _, group in itertools.groupby(ordered, key=lambda layer: place_of_layer(layer).stack)]
    # (-gain per layer, order pushed, layers, measured): a max-heap on the gain per layer
    groups: list[tuple[float, int, list[str], bool]] = []
    pushed, rest = itertools.count(), everything - full
    for number, group in enumerate(stacks):
        measured = number < len(stacks) - 1
        gain = measure(frozenset(group)) - full if measured else rest
        advance(f"{group[0]}..{group[-1]} float: {gain:+.2e}{'' if measured else ' (inferred)'}")
        rest -= gain
        heapq.heappush(groups, (-gain / len(group), next(pushed), group, measured))
    keep: list[str] = []
    sensitivity: dict[str, float] = {}
    reached = full
    while groups and -groups[0][0] > 0:
        negative, _, group, measured = heapq.heappop(groups)
        if len(group) > 1 or not measured:
            first, second = (group[: len(group) // 2], group[len(group) // 2 :]) if len(group) > 1 else (group, [])
            gain = measure(frozenset(first)) - full
            advance(f"{first[0] if len(first) == 1 else f'{first[0]}..{first[-1]}'} float: {gain:+.2e}")
            heapq.heappush(groups, (-gain / len(first), next(pushed), first, True))
            if second:
                rest = -negative * len(group) - gain
                heapq.heappush(groups, (-rest / len(second), next(pushed), second, False))
            continue
        layer = group[0]
        sensitivity[layer] = -negative
        tried = measure(frozenset([*keep, layer]))
        if tried <= reached:
            advance(f"{layer} left quantized: logits cosine {tried:.6f} with it, {reached:.6f} without")
            continue
        keep.append(layer)
        reached = tried
        advance(f"{len(keep)} layer(s) in float ({layer} added): logits cosine {reached:.6f}")
        if reached >= target:
            return FloatLayerChoice(frozenset(keep), sensitivity, full)
    critical(
        f"--target-agreement {target}: the layers whose floating point helps reach a logits cosine of {reached:.6f} "
        f"(fully quantized {full:.6f}, every layer float {everything:.6f}); lower the target, calibrate with more "
        "samples (--data) or another --method."
    )
