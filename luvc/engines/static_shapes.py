"""Every shape an export's graphs run at, from its manifest alone: what CUDA-graph replay captures, and what it costs.

LUVC fixes a request's shapes at export time (the budgets per bucket, each layer's KV capacity), so the shapes a
pipeline runs its graphs at form a finite set known before the first request. The rules that make it finite:

- a **prefill** (a bucket's, or the text prefill of prompts without visuals) runs on a GPU at its prompt's length
  padded on the right to a multiple of ``PREFILL_LENGTH_STEP`` (at most the graph's longest; each row keeps its
  length and causal attention never reads the padding), replaying or not, so ``--cuda-graphs`` never changes the
  shapes its kernels compute at; the CPU runs it at the prompt's length. A hybrid model's prefill is traced at a
  few fixed lengths, a ladder (``luvc.export.graphs.ladder_lengths``): a prompt runs the shortest rung that holds it
  (``prefill_shape``);
- the **embed** graph runs at a prefill's length, and at one token for each decode step;
- a **decode** step attends over a window of each KV cache (``attention_window``): the longest row's tokens rounded up
  to ``WINDOW_STEP``, at most the largest capacity, so an engine sees a new shape once per ``WINDOW_STEP`` tokens;
- every graph but vision runs at 1 .. ``max_batch`` rows; the **vision** graphs run plain (``REPLAYED_KINDS``).

``StaticShapes.of(manifest)`` lists them per graph; ``plan`` counts their replay buffers (``replay_buffer_bytes``) and
``inspect`` prints them (``describe``). The runtime pads by the same functions (``prefill_shape``,
``attention_window_length``), so a shape outside this list is one the runtime never makes.
"""

from __future__ import annotations

import dataclasses
import itertools

from luvc.engines.profiles import dimension_ranges
from luvc.export.inspect import evaluate_dim
from luvc.export.manifest import ExportManifest
from luvc.export.manifest_entries import dtype_bytes

# on a CUDA device a prefill's sequence is padded on the right to a multiple of this (each row keeps its length; causal
# attention never reads the padding): one captured graph per 64 tokens of prompt, not one per prompt length. Plain
# runs pad alike, so --cuda-graphs changes how a prefill runs, never the shapes its kernels compute at (a GPU's kernels
# add in another order at another length, and a near tie in SPU's ranking could then keep another token)
PREFILL_LENGTH_STEP = 64
# a decode step's attention window grows by this many tokens: one captured graph per 64 tokens of context
WINDOW_STEP = 64
# graph kinds replayed as CUDA graphs: the vision graphs run plain, being compute-bound (on an H200, Qwen2-VL-2B widths
# at 896x896, an ONNX Runtime CUDA vision graph took 17 ms plain and 36 ms replayed; LUVC's prefill 6.7 -> 4.7 ms and a
# decode step 4.4 -> 0.8 ms; docs/benchmarks.md)
REPLAYED_KINDS = frozenset({"prefill", "text", "decode", "embed"})
# the dimension of each kind's inputs that ``GraphShapes.lengths`` gives
LENGTH_DIMENSIONS = {"prefill": "sequence_length", "text": "sequence_length", "embed": "sequence_length"}
DECODE_WINDOW = "attention_window"


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def prefill_length(length: int, longest: int, step: int = PREFILL_LENGTH_STEP) -> int:
    """The sequence length a prefill of ``length`` tokens runs at: padded on the right to a multiple of ``step``, at
    most ``longest`` (the graph's); as it is for ``step`` 1 (the CPU) or a prompt past ``longest``."""
    if step <= 1:
        return length
    return max(length, min(longest, _round_up(length, step)))


def attention_window_length(valid: int, capacity: int) -> int:
    """The attention window of a decode step whose longest row holds ``valid`` tokens (the step's included): rounded up
    to ``WINDOW_STEP``, at most ``capacity`` (the largest KV capacity)."""
    return min(capacity, _round_up(valid, WINDOW_STEP))


# the decode step's own input and output the KV cache owns beside its keys and values (``KVCache.step_buffers``)
STEP_BUFFERS = ("inputs_embeds", "logits")


def replay_bound(manifest: ExportManifest, kind: str) -> frozenset[str]:
    """The inputs and outputs a replayed graph of ``kind`` binds as they are, never copied into buffers of the
    replayer's: the decode graph's KV caches (``past_key_values.*`` fed, ``present.*`` written) and its embeddings and
    logits, whose buffers the cache owns (the first rows of each: the same address at every batch size)."""
    if kind != "decode":
        return frozenset()
    geometry = manifest.geometry
    return frozenset(geometry.cache_names("past_key_values") + geometry.cache_names("present") + list(STEP_BUFFERS))


def fixed_length(manifest: ExportManifest, graph: str) -> int | None:
    """The one sequence length ``graph`` was traced at (a hybrid model's prefill), else None."""
    length = manifest.graphs[graph].input("inputs_embeds").shape[1]
    return length if isinstance(length, int) else None


def ladder(manifest: ExportManifest, graph: str) -> list[tuple[int, str]]:
    """The rungs of ``graph``'s prefill ladder (``luvc.export.graphs.ladder_lengths``), ``(length, graph)`` from the
    shortest, ``graph`` last; one rung where it has none; empty where ``graph`` takes any length or is no prefill."""
    entry = manifest.graphs.get(graph)
    if entry is None or entry.kind not in ("prefill", "text"):
        return []
    longest = fixed_length(manifest, graph)
    if longest is None:
        return []
    shorter = [name for name, entry in manifest.graphs.items() if entry.rung_of == graph]
    return sorted([(_traced_length(manifest, name), name) for name in shorter] + [(longest, graph)])


def _traced_length(manifest: ExportManifest, graph: str) -> int:
    length = fixed_length(manifest, graph)
    if length is None:
        raise ValueError(f"{graph} is a rung of a prefill ladder but takes any length")
    return length


def prefill_shape(
    manifest: ExportManifest, graph: str, length: int, step: int = PREFILL_LENGTH_STEP
) -> tuple[str, int]:
    """The graph and sequence length a prefill of ``length`` tokens runs at, for ``graph`` (a bucket's or the text
    prefill): the shortest rung of its ladder that holds the prompt, or ``graph`` itself padded to a multiple of
    ``step`` (a GPU's; 1: the prompt's own length)."""
    rungs = ladder(manifest, graph)
    if rungs:
        return next(((name, rung) for rung, name in rungs if rung >= length), (graph, rungs[-1][0]))
    return graph, prefill_length(length, dimension_ranges(manifest, graph)["sequence_length"][2], step)


@dataclasses.dataclass(frozen=True)
class GraphShapes:
    """The shapes one graph runs at: each of ``batch_sizes`` with each of ``lengths`` (a prefill's or embed's sequence
    lengths, a decode step's attention windows; empty for a graph of one shape per batch size)."""

    graph: str
    kind: str
    batch_sizes: tuple[int, ...]
    lengths: tuple[int, ...] = ()

    @property
    def count(self) -> int:
        """How many shapes (captured graphs, when replayed)."""
        return len(self.batch_sizes) * max(1, len(self.lengths))

    def bindings(self) -> list[dict[str, int]]:
        """Each shape as values of the graph's symbolic dimensions."""
        name = DECODE_WINDOW if self.kind == "decode" else LENGTH_DIMENSIONS.get(self.kind)
        lengths = self.lengths or (None,)
        return [
            {"batch": batch, "images": batch} | ({name: length} if name and length is not None else {})
            for batch, length in itertools.product(self.batch_sizes, lengths)
        ]

    def describe(self) -> str:
        """One line: the graph, its batch sizes and lengths."""
        batches = _span(self.batch_sizes)
        what = "windows" if self.kind == "decode" else "lengths"
        lengths = f" x {what} {_span(self.lengths)}" if self.lengths else ""
        return f"{self.graph}: batch {batches}{lengths} ({self.count})"


def _span(values: tuple[int, ...]) -> str:
    """``1-4``, ``64, 128 .. 902`` (its first two and last, when more than three), or the one value."""
    if len(values) == 1:
        return str(values[0])
    if all(b - a == 1 for a, b in itertools.pairwise(values)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(map(str, values)) if len(values) <= 3 else f"{values[0]}, {values[1]} .. {values[-1]}"


@dataclasses.dataclass(frozen=True)
class StaticShapes:
    """The shapes of every graph of an export a pipeline on a GPU runs (``of``)."""

    manifest: ExportManifest
    graphs: tuple[GraphShapes, ...]

    @classmethod
    def of(cls, manifest: ExportManifest, prefill_step: int = PREFILL_LENGTH_STEP) -> StaticShapes:
        """The shapes of ``manifest``'s graphs with prefills padded to ``prefill_step`` (a GPU's)."""
        batches = tuple(range(1, manifest.profile.max_batch + 1))
        prefills = {}
        for name, graph in manifest.graphs.items():
            if graph.kind in ("prefill", "text"):
                low, _, high = dimension_ranges(manifest, name)["sequence_length"]
                fixed = fixed_length(manifest, name)
                lengths = {fixed} if fixed else {prefill_length(n, high, prefill_step) for n in range(low, high + 1)}
                prefills[name] = GraphShapes(name, graph.kind, batches, tuple(sorted(lengths)))
        shapes = []
        for name, graph in manifest.graphs.items():
            if name in prefills:
                shapes.append(prefills[name])
            elif graph.kind == "embed":  # at every prefill's lengths, and one token a decode step
                lengths = {1, *(length for shape in prefills.values() for length in shape.lengths)}
                shapes.append(GraphShapes(name, "embed", batches, tuple(sorted(lengths))))
            elif graph.kind == "decode":
                largest = max(manifest.kv_cache.capacity)
                windows = {attention_window_length(valid, largest) for valid in range(1, largest + 1)}
                shapes.append(GraphShapes(name, "decode", batches, tuple(sorted(windows))))
            else:  # vision: one shape a batch size where it takes a batch of images
                takes_batch = any(entry.shape and isinstance(entry.shape[0], str) for entry in graph.inputs)
                shapes.append(GraphShapes(name, graph.kind, batches if takes_batch else (1,)))
        return cls(manifest, tuple(shapes))

    def __getitem__(self, graph: str) -> GraphShapes:
        return next(shapes for shapes in self.graphs if shapes.graph == graph)

    @property
    def replayed(self) -> tuple[GraphShapes, ...]:
        """The graphs captured as CUDA graphs (``REPLAYED_KINDS``)."""
        return tuple(shapes for shapes in self.graphs if shapes.kind in REPLAYED_KINDS)

    @property
    def count(self) -> int:
        """How many shapes replay captures in all."""
        return sum(shapes.count for shapes in self.replayed)

    def buffer_bytes(self, graph: str, binding: dict[str, int]) -> int:
        """Bytes of the replayer's own buffers for ``graph`` at ``binding``: every input and output but those bound as
        they are (``replay_bound``: a decode step's KV caches)."""
        entry = self.manifest.graphs[graph]
        bound = replay_bound(self.manifest, entry.kind)
        total = 0
        for tensor in (*entry.inputs, *entry.outputs):
            if tensor.name in bound:
                continue
            size = 1
            for dim in tensor.shape:
                value = evaluate_dim(dim, binding)
                size *= 0 if value is None else value
            total += size * dtype_bytes(tensor.dtype)
        return total

    def replay_buffer_bytes(self, per_graph_limit: int, per_graph_shapes: int) -> int:
        """Bytes of every replayed graph's own buffers with each of its shapes captured, each graph's at most
        ``per_graph_limit`` bytes and ``per_graph_shapes`` shapes (the replayer's limits: past them a shape runs
        plain)."""
        total = 0
        for shapes in self.replayed:
            sizes = [self.buffer_bytes(shapes.graph, binding) for binding in shapes.bindings()]
            total += min(per_graph_limit, sum(sorted(sizes)[:per_graph_shapes]))
        return total

    def describe(self) -> list[str]:
        """One line per replayed graph (``GraphShapes.describe``)."""
        return [shapes.describe() for shapes in self.replayed]
