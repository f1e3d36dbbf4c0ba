"""``manifest.json`` of an export folder: what made it, what is static, every graph's I/O and every file's hash.

The next stages (engines, runtime, parity) read this file instead of guessing, through the typed entries of
``luvc.export.manifest_entries``; this module reads and writes them (``ExportManifest``) and makes them from an adapter,
a bucket and a profile (``bucket_entry``, ``geometry_entry``, ...). ``ExportManifest.load`` validates the format
version and the fields, and checks that every listed file is present and unchanged; ``load_graph`` refuses a graph whose
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

from luvc import cache
from luvc.compress.config import LUVCConfig
from luvc.errors import critical
from luvc.export.buckets import BucketSize, size_name, size_option
from luvc.export.inspect import value_dims
from luvc.export.manifest_entries import (
    BucketEntry,
    GraphEntry,
    KVCacheEntry,
    ModelEntry,
    ModelGeometry,
    PassEntry,
    PassesEntry,
    ProfileEntry,
    QuantizationEntry,
    TemplateEntry,
    TensorEntry,
)
from luvc.processing import ImageRules
from luvc.staging import OutputKind, partials_note

if TYPE_CHECKING:
    from luvc.export.bucket_plan import Bucket
    from luvc.models.base import VLMAdapter

MANIFEST_NAME = "manifest.json"
WEIGHTS_FILE = "weights.data"  # the external data the graphs of a large export share (luvc.export.weights)
FORMAT = "luvc-export/onnx"
ENGINE_FORMAT = "luvc-export/engines"  # the engine folder's manifest (luvc.engines.manifest)
EXPORT_OUTPUT = OutputKind("an export", MANIFEST_NAME, FORMAT)  # calibrated exports too
FORMAT_VERSION = 6  # 2: fixed-capacity decode graph with in-place KV update; 3: typed sections (template, geometry);
# 4: the decode graph attends over a window of each cache (attention_window); 5: prefill takes each row's length and
# visual shift, decode each row's write index; 6: sealed, always (``CONTENT_DIGEST``)
# the versions this release reads: 5 is 6's layout, written before or after manifests were sealed
READABLE_FORMAT_VERSIONS = (5, 6)
UNSEALED_FORMAT_VERSIONS = (5,)  # written, some of them, before the seal existed: read without one
ONNX_DTYPES = {value: name.lower() for name, value in onnx.TensorProto.DataType.items()}


CONTENT_DIGEST = "content_sha256"  # a manifest's seal: the sha256 of the rest of its content


def content_digest(data: dict[str, Any]) -> str:
    """The sha256 of a manifest's content (``data`` as written, without ``CONTENT_DIGEST``): its JSON with sorted
    keys and no spaces, so that any edit of a fact changes it, and reformatting the file does not."""
    content = {key: value for key, value in data.items() if key != CONTENT_DIGEST}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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


def constant_folded_initializers(model: onnx.ModelProto) -> set[str]:
    """Initializers read by a node whose inputs are all constant (initializers, ``Constant`` outputs, or outputs of
    such nodes), in graph order: what constant folding (ONNX Runtime's, the export's ``fold_constants`` pass) reads
    from the graph, whatever its size."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    constant = set(initializers)
    read: set[str] = set()
    for node in model.graph.node:  # a valid graph is in topological order
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant" or (inputs and all(name in constant for name in inputs)):
            constant.update(node.output)
            read.update(name for name in inputs if name in initializers)
    return read


def io_entries(values) -> list[TensorEntry]:
    """The ``TensorEntry`` of each ONNX value info."""
    return [
        TensorEntry(info.name, ONNX_DTYPES[info.type.tensor_type.elem_type], tuple(value_dims(info, unknown="?")))
        for info in values
    ]


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """Relative locations of the external-data files ``model`` references."""
    locations: set[str] = set()
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
    # what the image processor does, for a run that needs no processor (``luvc.pixel_recipe.recorded_rules``); absent
    # in exports written before it, and where the processor's own code must run
    image_rules: ImageRules | None = None
    # the tokenizer reads by ``tokenizers`` alone as ``transformers`` reads it (checked at export:
    # ``luvc.standalone_tokenizer``); False in exports written before the check
    tokenizer_standalone: bool = False
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
                geometry=_geometry(data["geometry"]),
                buckets={name: _bucket(entry) for name, entry in data["buckets"].items()},
                graphs={name: _graph(entry) for name, entry in data["graphs"].items()},
                files=data["files"],
                passes=PassesEntry(**data.get("passes", {"enabled": True})),
                kv_cache=KVCacheEntry(data["kv_cache"]["update"], tuple(data["kv_cache"]["capacity"])),
                quantization=QuantizationEntry.from_dict(data["quantization"]) if data.get("quantization") else None,
                image_rules=ImageRules.from_dict(data["image_rules"]) if data.get("image_rules") else None,
                tokenizer_standalone=data.get("tokenizer_standalone", False) is True,
                format=data["format"],
                format_version=data["format_version"],
            )
        except (KeyError, TypeError) as error:
            critical(f"{source} does not have the fields this luvc-export reads ({error}); re-export with it.")

    def to_json(self) -> str:
        """The manifest as written: its fields, sealed with their ``content_sha256`` (``content_digest``)."""
        written = dataclasses.replace(self, format_version=FORMAT_VERSION)  # read from an older one, or new
        data = json.loads(json.dumps(dataclasses.asdict(written)))  # as a reader parses it: lists, string keys
        data[CONTENT_DIGEST] = content_digest(data)
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

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
        if folder.is_file():
            critical(
                f"{folder} is a file, not an export folder; pass the folder `luvc-export export` wrote (its --out)."
            )
        if not path.is_file():
            critical(
                f"{folder} has no {MANIFEST_NAME}; it is not a finished export (run `luvc-export export`)."
                + partials_note(folder)
            )
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
        if data.get("format") != FORMAT or data.get("format_version") not in READABLE_FORMAT_VERSIONS:
            critical(
                f"{path} is format {data.get('format')!r} v{data.get('format_version')}, this luvc-export reads "
                f"{FORMAT!r} v{FORMAT_VERSION}; re-export with this version."
            )
        recorded = data.pop(CONTENT_DIGEST, None)  # an export written before manifests were sealed has none
        if recorded is None and data["format_version"] not in UNSEALED_FORMAT_VERSIONS:
            critical(
                f"{path} has no {CONTENT_DIGEST}, which luvc-export writes into every v{data['format_version']} "
                "manifest: it was edited after luvc-export wrote it, so what it says of the graphs cannot be trusted; "
                "restore it from the export, or re-export."
            )
        if recorded is not None and recorded != content_digest(data):
            critical(
                f"{path} was edited after luvc-export wrote it (its content no longer matches its {CONTENT_DIGEST}), "
                "so what it says of the graphs cannot be trusted; restore it from the export, or re-export."
            )
        manifest = cls.from_dict(data, str(path))
        if verify:
            manifest.verify(folder)
        return manifest

    def verify(self, folder: Path) -> None:
        """Every file listed is present and has its recorded sha256 (a file hashed before and unchanged since, by its
        ``stat``, is not hashed again: ``luvc.cache``)."""
        for name, digest in self.files.items():
            file = Path(folder) / name
            if not file.is_file():
                critical(f"{file} is listed in {MANIFEST_NAME} but missing; copy the whole export folder.")
            if cache.known_digest(file, digest):
                continue
            if sha256_file(file) != digest:
                critical(f"{file} does not match its sha256 in {MANIFEST_NAME}; the file changed or is truncated.")
            cache.remember_digest(file, digest)

    @property
    def weights_files(self) -> list[str]:
        """The external-data files the export's graphs keep their weights in, each once, sorted."""
        return sorted({location for graph in self.graphs.values() for location in graph.external_data})

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

    def bucket_for(self, size: BucketSize) -> BucketEntry:
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


def bucket_entry(bucket: Bucket) -> BucketEntry:
    """The manifest entry of a planned bucket."""
    from luvc.export.llm import kept_index_layers

    plan = bucket.budget_plan
    return BucketEntry(
        image_size=bucket.image_size,
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
        vision="" if bucket.parts else f"vision_{bucket.name}",
        prefill=f"prefill_{bucket.name}",
        host=f"host_{bucket.name}.npz",
        parts=tuple(bucket.parts),
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
        image_text=adapter.image_sequence[0] if adapter.image_sequence else None,
        image_token=adapter.image_sequence[1] if adapter.image_sequence else None,
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
        **_linear_geometry(adapter),
        **_sliding_geometry(adapter),
    )


def _sliding_geometry(adapter: VLMAdapter) -> dict[str, Any]:
    """An LLM's sliding window and its sliding layers (nothing for an LLM whose layers all attend globally)."""
    if not adapter.sliding_layers:
        return {}
    return {"sliding_window": adapter.attention_window, "sliding_layers": adapter.sliding_layers}


def _linear_geometry(adapter: VLMAdapter) -> dict[str, Any]:
    """A hybrid LLM's linear-attention layers and their state shapes (nothing for an LLM that only attends)."""
    linear = adapter.llm_spec().linear
    if linear is None:
        return {}
    return {
        "linear_layers": tuple(sorted(linear.layers)),
        "conv_state_shape": linear.conv_state_shape,
        "recurrent_state_shape": linear.recurrent_state_shape,
    }


def _geometry(entry: dict[str, Any]) -> ModelGeometry:
    """The geometry as JSON holds it, its lists (the linear-attention layers and state shapes) as tuples."""
    values: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value for key, value in entry.items()}
    return ModelGeometry(**values)


def _bucket(entry: dict[str, Any]) -> BucketEntry:
    lists = ("budgets", "prune_layers", "kept_index_layers")
    spans = tuple(map(tuple, entry.get("spans", ())))
    fields = {"image_size": tuple(entry["image_size"]), "spans": spans, "parts": tuple(entry.get("parts", ()))}
    entry = {key: value for key, value in entry.items() if key != "kv_lengths"}  # older exports wrote it, unread
    return BucketEntry(**{**entry, **fields, **{k: tuple(entry[k]) for k in lists}})


def _graph(entry: dict[str, Any]) -> GraphEntry:
    tensors = {key: TensorEntry.all_of(entry[key]) for key in ("inputs", "outputs")}
    lists = {key: tuple(entry.get(key, ())) for key in ("node_prefixes", "external_data")}
    passes = tuple(PassEntry.from_dict(stat) for stat in entry.get("passes", ()))
    return GraphEntry(**{**entry, **tensors, **lists, "passes": passes})


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
    """The ONNX model of graph ``name`` with its weights; a clear error when its external-data file is missing or
    has other hard links."""
    path = checked_graph_path(folder, name, manifest)
    model = onnx.load(str(path), load_external_data=False)
    refuse_linked_weights(path.parent, external_data_files(model))
    onnx.load_external_data_for_model(model, str(path.parent))
    return model


def refuse_linked_weights(folder: Path, locations: list[str]) -> None:
    """Refuse, in one line, external-data files of ``folder`` with other hard links, which onnx will not read (it takes
    them for a hard-link attack): a folder copied with ``cp -al`` has them. ONNX Runtime reads them, so only the
    commands that load graphs in Python (calibrate, parity's graph checks) meet this."""
    for location in locations:
        links = (folder / location).stat().st_nlink
        if links > 1:
            critical(
                f"{folder / location} has {links} hard links (a copy made with `cp -l` or `cp -al` shares it), and "
                "onnx does not read weights from a file with other links; copy the export with `cp -r` instead."
            )
