"""The schema of an export's ``manifest.json``: one frozen dataclass per section (``luvc.export.manifest`` reads and
writes the file). ``ModelEntry`` (what made it), ``TemplateEntry`` (the prompt the export expects), ``ModelGeometry``
(the LLM's and encoder's sizes), ``ProfileEntry`` (the export limits), ``BucketEntry`` (the static facts of one image
size), ``GraphEntry`` with ``TensorEntry`` I/O and ``PassEntry`` per graph pass, ``KVCacheEntry`` (the decode graph's
cache), ``PassesEntry``, and ``QuantizationEntry`` (what calibration did).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from luvc.errors import critical
from luvc.export.buckets import BucketKey

if TYPE_CHECKING:
    import torch

PRECISIONS = {"fp32": "float32", "fp16": "float16"}  # graph precision -> the torch dtype it traces in


def dtype_bytes(name: str) -> int:
    """Bytes per element of a manifest dtype name (``float``, ``float16``, ...)."""
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.DataType.Value(name.upper())).itemsize


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """A graph input or output: name, ONNX dtype name (``float``, ``float16``, ``int64``) and shape, with symbolic
    dimensions as strings (``batch``, ``sequence_length``, ``135 + text_tokens``)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def all_of(cls, entries: list[dict[str, Any]]) -> tuple[TensorEntry, ...]:
        """The entries of a manifest's I/O list, as JSON holds them."""
        return tuple(cls(entry["name"], entry["dtype"], tuple(entry["shape"])) for entry in entries)


@dataclasses.dataclass(frozen=True)
class PassEntry:
    """What one graph pass did to a graph: its node count before and after, and the count of each op type it
    changed (``ops[op] = (before, after)``)."""

    name: str
    before: int
    after: int
    ops: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)

    @property
    def delta(self) -> int:
        return self.after - self.before

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> PassEntry:
        """The entry of a manifest's ``passes`` list (older exports wrote the name under ``pass``)."""
        ops = {op: tuple(counts) for op, counts in entry.get("ops", {}).items()}
        return cls(entry["name"] if "name" in entry else entry["pass"], entry["before"], entry["after"], ops)


@dataclasses.dataclass(frozen=True)
class GraphEntry:
    """One graph file: its kind (``embed``, ``vision``, ``prefill``, ``decode``, ``text``: the prefill of prompts
    without visuals), the bucket it belongs to (vision and prefill), its external-data files, I/O, LUVC node
    prefixes, node count and what each graph pass did."""

    file: str
    kind: str
    bucket: str | None
    inputs: tuple[TensorEntry, ...]
    outputs: tuple[TensorEntry, ...]
    node_prefixes: tuple[str, ...] = ()
    num_nodes: int = 0
    external_data: tuple[str, ...] = ()
    passes: tuple[PassEntry, ...] = ()
    opset: int | None = None  # a quantized graph's own opset (FP8 Q/DQ needs 19)
    rung_of: str | None = None  # a hybrid model's prefill traced shorter: the longest graph of its ladder

    def input(self, name: str) -> TensorEntry:
        """The input named ``name``."""
        return next(entry for entry in self.inputs if entry.name == name)

    def output(self, name: str) -> TensorEntry:
        """The output named ``name``."""
        return next(entry for entry in self.outputs if entry.name == name)


@dataclasses.dataclass(frozen=True)
class BucketEntry(BucketKey):
    """The static facts of one image-size bucket: tokens per image (after OIM; and without it), where the image
    tokens start in the prompt, the shortest text after them, the per-layer budgets, the layers SPU runs before (and
    those whose kept indices the prefill graph outputs), the first position after the image,
    and the names of its vision and prefill graphs and host-metadata file."""

    image_size: tuple[int, int]
    tokens_per_image: int
    uncompressed_tokens_per_image: int
    visual_start: int
    min_text_tokens: int
    budgets: tuple[int, ...]
    prune_layers: tuple[int, ...]
    kept_index_layers: tuple[int, ...]
    next_position: int
    vision: str
    prefill: str
    host: str
    frames: int = 0  # a video bucket's frames (0: an image bucket)
    spans: tuple[tuple[int, int], ...] = ()  # (start, tokens) of each visual span when there are several
    parts: tuple[str, ...] = ()  # a mixed bucket's image and video buckets, whose vision graphs it runs

    @property
    def visual_spans(self) -> tuple[tuple[int, int], ...]:
        """``(start, tokens)`` of each run of visual tokens in the prompt (a Qwen3-VL video: one per slice)."""
        return self.spans or ((self.visual_start, self.tokens_per_image),)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """What the export was made from: the checkpoint (or built-in name), its architecture and config hash."""

    id: str
    architecture: str
    config_sha256: str
    weights_sha256: str | None = None  # luvc.export.source: exports before 0.1 recorded none


@dataclasses.dataclass(frozen=True)
class TemplateEntry:
    """The prompt the graphs expect: the template (``{image}``, ``{prompt}``), the BOS text it starts with, where it
    came from, the image placeholder and its token id, the end-of-sequence id(s), and for families that take videos
    the video placeholder (which takes the image's place in the template) and its token id."""

    text: str
    bos: str
    source: str
    image_placeholder: str
    image_token_id: int
    eos_token_id: int | list[int] | None
    video_placeholder: str | None = None
    video_token_id: int | None = None
    video_frame_template: str | None = None  # Qwen3-VL: one block per temporal slice (luvc.prompt.video_text)
    visual_separator: str | None = None  # between the image and the video of a mixed bucket's prompt
    chat_template: str | None = None  # the Jinja template conversations render with (luvc.prompt.render_conversation)
    # an image's text where it is not its placeholder repeated (Gemma 3: blank lines, the begin token, the soft
    # tokens, the end token): ``{tokens}`` takes ``image_token`` once per visual token; it takes the placeholder's place
    image_text: str | None = None
    image_token: str | None = None

    def image_sequence(self, tokens: int) -> str | None:
        """The text of an image of ``tokens`` visual tokens, or ``None`` where it is the placeholder repeated."""
        if self.image_text is None or self.image_token is None:
            return None
        return self.image_text.replace("{tokens}", self.image_token * tokens)

    def placeholder_of(self, bucket: BucketEntry) -> tuple[str, int]:
        """The placeholder text and token id of ``bucket``'s image or video tokens."""
        if not bucket.frames:
            return self.image_placeholder, self.image_token_id
        if self.video_placeholder is None or self.video_token_id is None:
            critical(f"the export's template has no video placeholder for its video bucket {bucket.name}; export again")
        return self.video_placeholder, self.video_token_id


STATE_KINDS = ("conv", "recurrent")  # a linear-attention layer's pair, in the place of an attention layer's key, value


def kv_names(prefix: str, num_layers: int, linear: Collection[int] = ()) -> list[str]:
    """``{prefix}.{layer}.key`` and ``.value`` for every layer, keys first within a layer; ``.conv`` and
    ``.recurrent`` for a ``linear`` (linear-attention) layer."""
    return [
        f"{prefix}.{layer}.{kind}"
        for layer in range(num_layers)
        for kind in (STATE_KINDS if layer in linear else ("key", "value"))
    ]


@dataclasses.dataclass(frozen=True)
class ModelGeometry:
    """Sizes the runtime allocates with: LLM hidden size, layers, KV heads, head size, vocabulary, rows of position
    ids (3 for M-RoPE), and the encoder's patch size; a hybrid LLM's linear-attention layers (Qwen3.5) and one row's
    convolution and recurrent state in each of them (they keep no keys and values); an LLM's sliding window and the
    layers that slide (Gemma 3)."""

    hidden_size: int
    num_layers: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    position_rows: int
    patch_size: int
    temporal_patch_size: int | None = None  # frames in one temporal patch (families that take videos)
    linear_layers: tuple[int, ...] = ()
    conv_state_shape: tuple[int, ...] = ()  # (channels, kernel), in the export's precision
    recurrent_state_shape: tuple[int, ...] = ()  # (value heads, key width, value width), float32
    sliding_window: int | None = None  # positions a sliding layer's token sees (Gemma 3)
    sliding_layers: tuple[int, ...] = ()  # the layers that see only that window; the decode graph takes their start

    def attends(self, layer: int) -> bool:
        """Whether ``layer`` keeps keys and values (it is not a linear-attention layer)."""
        return layer not in self.linear_layers

    def state_bytes_per_row(self, bytes_per_element: int) -> int:
        """Bytes of one row's states over the linear-attention layers: the convolution state at ``bytes_per_element``
        (the export's precision), the recurrent state in float32."""
        conv, recurrent = math.prod(self.conv_state_shape), math.prod(self.recurrent_state_shape)
        return len(self.linear_layers) * (conv * bytes_per_element + recurrent * 4)

    def cache_names(self, prefix: str) -> list[str]:
        """The decode cache's tensors under ``prefix`` (``past_key_values``, ``present``), ``kv_names``' order."""
        return kv_names(prefix, self.num_layers, self.linear_layers)


@dataclasses.dataclass(frozen=True)
class ProfileEntry:
    """The export limits: image sizes, precision, batch, text and generation lengths, opset, where weights live and
    the KV-update form."""

    image_sizes: tuple[tuple[int, int], ...]
    precision: str
    max_batch: int
    max_text_tokens: int
    max_new_tokens: int
    opset: int
    external_data: str
    kv_update: str
    video_sizes: tuple[tuple[int, int, int], ...] = ()
    mixed_sizes: tuple[tuple[tuple[int, int], tuple[int, int, int]], ...] = ()

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype the graphs are traced in."""
        import torch

        return getattr(torch, PRECISIONS[self.precision])

    def check_max_new_tokens(self, max_new_tokens: int, label: str | None = None) -> None:
        """Refuse a generation length outside 1 .. the profile's ``max_new_tokens``; ``label`` names the value in the
        error (default ``max_new_tokens=N``; a CLI flag, e.g. ``--max-new-tokens N``)."""
        if not 1 <= max_new_tokens <= self.max_new_tokens:
            critical(
                f"{label or f'max_new_tokens={max_new_tokens}'} must be between 1 and the export profile's "
                f"{self.max_new_tokens}; re-export with a larger --max-new-tokens for more."
            )


@dataclasses.dataclass(frozen=True)
class KVCacheEntry:
    """The decode graph's KV cache: the update form and every layer's capacity."""

    update: str
    capacity: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class QuantizationSource:
    """The fp32 export a calibrated export was made from, and its manifest's sha256."""

    export: str
    manifest_sha256: str


@dataclasses.dataclass(frozen=True)
class CalibrationRun:
    """What calibration ran on: the samples by name, and the greedy decode steps per sample."""

    samples: tuple[str, ...]
    decode_steps: int


@dataclasses.dataclass(frozen=True)
class QuantizationEntry:
    """What ``luvc-export calibrate`` did: precision and method, the quantizer, the source export, the calibration
    run, what was quantized and how, the nodes kept in floating point (per graph: node -> reason), the ranges file,
    TensorRT 10's calibration caches (INT8), the agreement with the fp32 source (first token and greedy decode), (INT4)
    the input channels per weight scale, (``--target-agreement``) the layers kept in floating point and why, and
    (``--smooth``) SmoothQuant's strength and the products it smoothed."""

    precision: str
    method: str
    library: str
    source: QuantizationSource
    calibration: CalibrationRun
    quantized_ops: tuple[str, ...]
    activations: str
    weights: str
    excluded_nodes: dict[str, dict[str, str]]
    ranges_file: str
    tensorrt10_calibration_caches: tuple[str, ...]
    agreement_with_fp32: dict[str, float] = dataclasses.field(default_factory=dict)
    block_size: int | None = None
    # accuracy-driven precision: the logits cosine asked for, what the full quantization reached, the layers kept in
    # floating point to reach it, and each quantized layer's sensitivity (the logits cosine gained by keeping it
    # alone in floating point)
    target_agreement: float | None = None
    fully_quantized_cosine: float | None = None
    float_layers: tuple[str, ...] = ()
    layer_sensitivity: dict[str, float] = dataclasses.field(default_factory=dict)
    float_layer_bytes: dict[str, int] = dataclasses.field(default_factory=dict)  # kept layer -> bytes beyond INT8
    target_search_seconds: float | None = None  # the search's wall time, its one quantization included
    # ``--smooth``: SmoothQuant's migration strength, and the products whose weights (and input's maker) it scaled
    smoothing_alpha: float | None = None
    smoothed_products: tuple[str, ...] = ()

    def kept_float_counts(self, graph: str) -> dict[str, int]:
        """How many of ``graph``'s nodes stay float for each reason, a reason's own figures (after its colon: a
        heavy-tailed input's ratio) left out, so that each rule is one row."""
        rules = [reason.split(":")[0] for reason in self.excluded_nodes.get(graph, {}).values()]
        return {rule: rules.count(rule) for rule in sorted(set(rules))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizationEntry:
        return cls(
            **{
                **data,
                "source": QuantizationSource(**data["source"]),
                "calibration": CalibrationRun(
                    tuple(data["calibration"]["samples"]), data["calibration"]["decode_steps"]
                ),
                "quantized_ops": tuple(data["quantized_ops"]),
                "tensorrt10_calibration_caches": tuple(data["tensorrt10_calibration_caches"]),
                "float_layers": tuple(data.get("float_layers", ())),
                "smoothed_products": tuple(data.get("smoothed_products", ())),
            }
        )


@dataclasses.dataclass(frozen=True)
class PassesEntry:
    """Whether the graph passes ran, and whether LUVC units were traced as plugin nodes (``--plugin-nodes``)."""

    enabled: bool
    plugin_nodes: bool = False
