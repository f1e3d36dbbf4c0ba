"""``manifest.json`` of an export folder: what made it, what is static, every graph's I/O and every file's hash.

The next stages (engines, runtime, parity) read this file instead of guessing, through typed entries: ``ModelEntry``
(what made it), ``TemplateEntry`` (the prompt the export expects), ``ModelGeometry`` (the LLM's and encoder's sizes),
``ProfileEntry`` (the export limits), ``BucketEntry`` (the static facts of one image size), ``GraphEntry`` with
``TensorEntry`` I/O, ``KVCacheEntry`` (the decode graph's cache). ``ExportManifest.load`` validates the format version
and the fields, and checks that every listed file is present and unchanged; ``load_graph`` refuses a graph whose
external-data file is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
from onnx.external_data_helper import _get_all_tensors, uses_external_data

from luvc.compress.config import LUVCConfig
from luvc.errors import critical
from luvc.export.buckets import BucketKey, size_name, size_option
from luvc.export.inspect import value_dims
from luvc.staging import OutputKind

if TYPE_CHECKING:
    from luvc.export.bucket_plan import Bucket
    from luvc.export.profile import ExportProfile
    from luvc.models.base import VLMAdapter

MANIFEST_NAME = "manifest.json"
FORMAT = "luvc-export/onnx"
ENGINE_FORMAT = "luvc-export/engines"  # the engine folder's manifest (luvc.engines.manifest)
EXPORT_OUTPUT = OutputKind("an export", MANIFEST_NAME, FORMAT)  # calibrated exports too
FORMAT_VERSION = 5  # 2: fixed-capacity decode graph with in-place KV update; 3: typed sections (template, geometry);
# 4: the decode graph attends over a window of each cache (attention_window); 5: prefill takes each row's length and
# visual shift, decode each row's write index
ONNX_DTYPES = {value: name.lower() for name, value in onnx.TensorProto.DataType.items()}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class ExternalTensor:
    """Where an initializer's bytes are in an external-data file."""

    name: str
    location: str
    offset: int
    length: int
    data_type: int
    shape: tuple[int, ...]

    @classmethod
    def of(cls, tensor: onnx.TensorProto) -> ExternalTensor:
        info = {entry.key: entry.value for entry in tensor.external_data}
        return cls(
            tensor.name,
            info["location"],
            int(info.get("offset", 0)),
            int(info["length"]),
            tensor.data_type,
            tuple(tensor.dims),
        )


def external_tensors(model: onnx.ModelProto) -> list[ExternalTensor]:
    """The initializers of ``model``'s main graph whose data is in an external file (read without loading it)."""
    return [
        ExternalTensor.of(tensor)
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
    ]


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


def io_entries(values) -> list[TensorEntry]:
    """The ``TensorEntry`` of each ONNX value info."""
    return [
        TensorEntry(info.name, ONNX_DTYPES[info.type.tensor_type.elem_type], tuple(value_dims(info, unknown="?")))
        for info in values
    ]


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
    passes: tuple[dict[str, Any], ...] = ()
    opset: int | None = None  # a quantized graph's own opset (FP8 Q/DQ needs 19)

    def input(self, name: str) -> TensorEntry:
        """The input named ``name``."""
        return next(entry for entry in self.inputs if entry.name == name)


@dataclasses.dataclass(frozen=True)
class BucketEntry(BucketKey):
    """The static facts of one image-size bucket: tokens per image (after OIM; and without it), where the image
    tokens start in the prompt, the shortest text after them, the per-layer budgets, the layers SPU runs before (and
    those whose kept indices the prefill graph outputs), the first position after the image, each layer's KV length,
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
    kv_lengths: tuple[str, ...]
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

    def placeholder_of(self, bucket: BucketEntry) -> tuple[str, int]:
        """The placeholder text and token id of ``bucket``'s image or video tokens."""
        if bucket.frames:
            return self.video_placeholder, self.video_token_id
        return self.image_placeholder, self.image_token_id


@dataclasses.dataclass(frozen=True)
class ModelGeometry:
    """Sizes the runtime allocates with: LLM hidden size, layers, KV heads, head size, vocabulary, rows of position
    ids (3 for M-RoPE), and the encoder's patch size."""

    hidden_size: int
    num_layers: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    position_rows: int
    patch_size: int
    temporal_patch_size: int | None = None  # frames in one temporal patch (families that take videos)


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
    TensorRT 10's calibration caches (INT8), the first-token agreement with the fp32 source, (INT4) the input
    channels per weight scale, and (``--target-agreement``) the layers kept in floating point and why."""

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
            }
        )


@dataclasses.dataclass(frozen=True)
class PassesEntry:
    """Whether the graph passes ran, and whether LUVC units were traced as plugin nodes (``--plugin-nodes``)."""

    enabled: bool
    plugin_nodes: bool = False


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """Relative locations of the external-data files ``model`` references."""
    locations = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            locations.update(entry.value for entry in tensor.external_data if entry.key == "location")
    return sorted(locations)


@dataclasses.dataclass(frozen=True)
class ExportManifest:
    """The parsed ``manifest.json``: typed sections (see the module docstring); ``luvc`` is the export's resolved
    ``LUVCConfig``, ``files`` maps every file of the folder (external data included) to its sha256, ``quantization``
    is set by ``luvc-export calibrate``."""

    model: ModelEntry
    luvc: LUVCConfig
    precision: str
    opset: int
    versions: dict[str, str]
    profile: ProfileEntry
    template: TemplateEntry
    geometry: ModelGeometry
    buckets: dict[str, BucketEntry]
    graphs: dict[str, GraphEntry]
    files: dict[str, str]
    kv_cache: KVCacheEntry
    passes: PassesEntry = PassesEntry(enabled=True)
    quantization: QuantizationEntry | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = MANIFEST_NAME) -> ExportManifest:
        """The manifest of a parsed ``manifest.json``; a missing or unknown field is one clear error."""
        try:
            return cls(
                model=ModelEntry(**data["model"]),
                luvc=LUVCConfig.from_dict(data["luvc"]),
                precision=data["precision"],
                opset=data["opset"],
                versions=data["versions"],
                profile=ProfileEntry(
                    **{
                        **data["profile"],
                        "image_sizes": tuple(map(tuple, data["profile"]["image_sizes"])),
                        "video_sizes": tuple(map(tuple, data["profile"].get("video_sizes", ()))),
                        "mixed_sizes": tuple(
                            (tuple(image), tuple(video)) for image, video in data["profile"].get("mixed_sizes", ())
                        ),
                    }
                ),
                template=TemplateEntry(**data["template"]),
                geometry=ModelGeometry(**data["geometry"]),
                buckets={name: _bucket(entry) for name, entry in data["buckets"].items()},
                graphs={name: _graph(entry) for name, entry in data["graphs"].items()},
                files=data["files"],
                passes=PassesEntry(**data.get("passes", {"enabled": True})),
                kv_cache=KVCacheEntry(data["kv_cache"]["update"], tuple(data["kv_cache"]["capacity"])),
                quantization=QuantizationEntry.from_dict(data["quantization"]) if data.get("quantization") else None,
                format=data["format"],
                format_version=data["format_version"],
            )
        except (KeyError, TypeError) as error:
            critical(f"{source} does not have the fields this luvc-export reads ({error}); re-export with it.")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    def save(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(
        cls, folder: str | Path, verify: bool = True, engines_flags: str | None = "--backend trt --engines"
    ) -> ExportManifest:
        """Read ``folder/manifest.json``; with ``verify`` check every listed file's presence and sha256. An engine
        folder given instead is refused naming how the command takes engines (``engines_flags``; ``None``: it takes
        none)."""
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not path.is_file():
            critical(f"{folder} has no {MANIFEST_NAME}; it is not a finished export (run `luvc-export export`).")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            critical(f"{path} is not valid JSON ({error}); re-run the export.")
        if data.get("format") == ENGINE_FORMAT:
            engines = f" and add {engines_flags} {folder}" if engines_flags else ""
            critical(
                f"{folder} is an engine folder (made by `luvc-export build`), not an export; pass the export folder "
                f"it was built from{engines}."
            )
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            critical(
                f"{path} is format {data.get('format')!r} v{data.get('format_version')}, this luvc-export reads "
                f"{FORMAT!r} v{FORMAT_VERSION}; re-export with this version."
            )
        manifest = cls.from_dict(data, str(path))
        if verify:
            manifest.verify(folder)
        return manifest

    def verify(self, folder: Path) -> None:
        """Every file listed is present and has its recorded sha256."""
        for name, digest in self.files.items():
            file = Path(folder) / name
            if not file.is_file():
                critical(f"{file} is listed in {MANIFEST_NAME} but missing; copy the whole export folder.")
            if sha256_file(file) != digest:
                critical(f"{file} does not match its sha256 in {MANIFEST_NAME}; the file changed or is truncated.")

    def graph_path(self, folder: str | Path, name: str) -> Path:
        if name not in self.graphs:
            critical(f"The export has no graph {name!r}; it has {sorted(self.graphs)}.")
        return Path(folder) / self.graphs[name].file

    @property
    def float_precision(self) -> str:
        """The floating-point precision the graphs were traced in (``fp32`` or ``fp16``): ``precision`` itself for an
        exported folder, and what a calibrated export keeps for everything it did not quantize."""
        return self.profile.precision

    @property
    def text_prefill(self) -> str:
        """The graph of prompts without visuals (kind ``text``)."""
        return next(name for name, graph in self.graphs.items() if graph.kind == "text")

    @property
    def longest_text_prompt(self) -> int:
        """The most tokens a prompt without visuals may have: its answer must fit every layer's KV cache."""
        return min(self.kv_cache.capacity) - self.profile.max_new_tokens

    def bucket_for(self, size: tuple[int, ...]) -> BucketEntry:
        """The bucket of a processed image size ``(H, W)`` or video ``(frames, H, W)``, or an error listing the
        exported ones."""
        name = size_name(size)
        if name not in self.buckets:
            mixed, option = isinstance(size[0], tuple), size_option(size)
            what = "image and video" if mixed else "video (frames x height x width)" if len(size) == 3 else "image size"
            critical(
                f"Processed {what} {name} is outside this export's profile (buckets: {sorted(self.buckets)}); "
                f"{'fit them' if mixed else 'sample it' if len(size) == 3 else 'resize it'} to a bucket (--fit nearest "
                f"or pad does), or re-export with {option} {name}."
            )
        return self.buckets[name]


def bucket_entry(bucket: Bucket, num_layers: int) -> BucketEntry:
    """The manifest entry of a planned bucket."""
    from luvc.export.llm import kept_index_layers

    plan = bucket.budget_plan
    return BucketEntry(
        image_size=tuple(bucket.image_size),
        tokens_per_image=bucket.tokens_per_image,
        uncompressed_tokens_per_image=bucket.uncompressed_tokens_per_image,
        visual_start=bucket.visual_start,
        min_text_tokens=bucket.min_text_tokens,
        budgets=tuple(plan.total),
        prune_layers=tuple(plan.prune_layers()),
        kept_index_layers=tuple(kept_index_layers(plan)),
        next_position=bucket.next_position,
        frames=bucket.frames,
        spans=tuple(bucket.visual_spans) if len(bucket.visual_spans) > 1 else (),
        kv_lengths=tuple(
            f"{bucket.visual_end - bucket.tokens_per_image + plan.total[layer]} + text_tokens"
            for layer in range(num_layers)
        ),
        vision="" if bucket.parts else f"vision_{bucket.name}",
        prefill=f"prefill_{bucket.name}",
        host=f"host_{bucket.name}.npz",
        parts=tuple(bucket.parts),
    )


def profile_entry(profile: ExportProfile) -> ProfileEntry:
    """The manifest entry of a resolved export profile."""
    return ProfileEntry(
        **{
            **dataclasses.asdict(profile),
            "image_sizes": tuple(map(tuple, profile.image_sizes)),
            "video_sizes": tuple(map(tuple, profile.video_sizes)),
            "mixed_sizes": tuple((tuple(image), tuple(video)) for image, video in profile.mixed_sizes),
        }
    )


def template_entry(adapter: VLMAdapter) -> TemplateEntry:
    """The prompt an adapter's graphs expect (its chat template or the family's), with its special token ids."""
    stops = adapter.stop_token_ids
    return TemplateEntry(
        text=adapter.template.text,
        bos=adapter.template.bos,
        source=adapter.template.source,
        image_placeholder=adapter.image_placeholder,
        image_token_id=adapter.image_token_id,
        eos_token_id=stops[0] if len(stops) == 1 else (stops or None),
        video_placeholder=adapter.video_placeholder if adapter.takes_video else None,
        video_frame_template=adapter.video_frame_template if adapter.takes_video else None,
        visual_separator=adapter.visual_separator,
        video_token_id=adapter.video_token_id,
        chat_template=adapter.template.chat_template,
    )


def geometry_entry(adapter: VLMAdapter) -> ModelGeometry:
    """The sizes of an adapter's LLM and encoder the runtime allocates with."""
    text = adapter.language_model.config
    return ModelGeometry(
        hidden_size=text.hidden_size,
        num_layers=adapter.num_layers,
        num_key_value_heads=text.num_key_value_heads,
        head_dim=adapter.head_dim,
        vocab_size=text.vocab_size,
        position_rows=adapter.position_rows,
        patch_size=adapter.patch_size,
        temporal_patch_size=getattr(adapter.model.config.vision_config, "temporal_patch_size", None),
    )


def _bucket(entry: dict[str, Any]) -> BucketEntry:
    lists = ("budgets", "prune_layers", "kept_index_layers", "kv_lengths")
    spans = tuple(map(tuple, entry.get("spans", ())))
    fields = {"image_size": tuple(entry["image_size"]), "spans": spans, "parts": tuple(entry.get("parts", ()))}
    return BucketEntry(**{**entry, **fields, **{k: tuple(entry[k]) for k in lists}})


def _graph(entry: dict[str, Any]) -> GraphEntry:
    tensors = {key: TensorEntry.all_of(entry[key]) for key in ("inputs", "outputs")}
    lists = {key: tuple(entry.get(key, ())) for key in ("node_prefixes", "external_data", "passes")}
    return GraphEntry(**{**entry, **tensors, **lists})


def checked_graph_path(folder: str | Path, name: str, manifest: ExportManifest | None = None) -> Path:
    """The path of graph ``name``, after checking that it and its external-data files are there (nothing loaded)."""
    manifest = manifest or ExportManifest.load(folder, verify=False)
    path = manifest.graph_path(folder, name)
    if not path.is_file():
        critical(f"{path} is missing; copy the whole export folder (see {MANIFEST_NAME}).")
    for location in external_data_files(onnx.load(str(path), load_external_data=False)):
        if not (path.parent / location).is_file():
            critical(
                f"{path.name} keeps its weights in the external-data file {location!r}, which is missing from "
                f"{path.parent}; copy it next to {path.name} (every file is listed in {MANIFEST_NAME})."
            )
    return path


def load_graph(folder: str | Path, name: str, manifest: ExportManifest | None = None) -> onnx.ModelProto:
    """The ONNX model of graph ``name`` with its weights; a clear error when its external-data file is missing."""
    path = checked_graph_path(folder, name, manifest)
    model = onnx.load(str(path), load_external_data=False)
    onnx.load_external_data_for_model(model, str(path.parent))
    return model
