"""``manifest.json`` of an export folder: what made it, what is static, every graph's I/O and every file's hash.

The next stages (engines, runtime, parity) read this file instead of guessing. ``ExportManifest.load`` checks that
every listed file is present and unchanged; ``load_graph`` refuses a graph whose external-data file is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import onnx
from onnx.external_data_helper import _get_all_tensors, uses_external_data

from luvc.errors import critical
from luvc.export.inspect import value_dims

MANIFEST_NAME = "manifest.json"
FORMAT = "luvc-export/onnx"
ENGINE_FORMAT = "luvc-export/engines"  # the engine folder's manifest (luvc.engines.manifest)
FORMAT_VERSION = 2  # 2: fixed-capacity decode graph with in-place KV update (kv_cache section)
ONNX_DTYPES = {value: name.lower() for name, value in onnx.TensorProto.DataType.items()}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def io_entries(values) -> list[dict]:
    """``[{name, dtype, shape}]`` with symbolic dimensions as strings."""
    entries = []
    for info in values:
        dims = value_dims(info, unknown="?")
        entries.append({"name": info.name, "dtype": ONNX_DTYPES[info.type.tensor_type.elem_type], "shape": dims})
    return entries


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """Relative locations of the external-data files ``model`` references."""
    locations = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            locations.update(entry.value for entry in tensor.external_data if entry.key == "location")
    return sorted(locations)


@dataclasses.dataclass
class ExportManifest:
    """The parsed ``manifest.json``. ``graphs[name]`` holds ``file``, ``kind``, ``bucket``, ``inputs``, ``outputs``
    and ``node_prefixes``; ``buckets[name]`` the static facts of one image size; ``files`` maps every file of the
    folder (external data included) to its sha256."""

    model: dict[str, Any]
    luvc: dict[str, Any]
    precision: str
    opset: int
    versions: dict[str, str]
    profile: dict[str, Any]
    prompt: dict[str, Any]
    buckets: dict[str, dict[str, Any]]
    graphs: dict[str, dict[str, Any]]
    files: dict[str, str]
    passes: dict[str, Any] = dataclasses.field(default_factory=dict)
    kv_cache: dict[str, Any] = dataclasses.field(default_factory=dict)  # decode graph: update form, capacity per layer
    quantization: dict[str, Any] = dataclasses.field(default_factory=dict)  # set by `luvc-export calibrate`
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    def save(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, folder: str | Path, verify: bool = True) -> ExportManifest:
        """Read ``folder/manifest.json``; with ``verify`` check every listed file's presence and sha256."""
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not path.is_file():
            critical(f"{folder} has no {MANIFEST_NAME}; it is not a finished export (run `luvc-export export`).")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            critical(f"{path} is not valid JSON ({error}); re-run the export.")
        if data.get("format") == ENGINE_FORMAT:
            critical(
                f"{folder} is an engine folder (made by `luvc-export build`), not an export; pass the export folder "
                f"it was built from and add --backend trt --engines {folder}."
            )
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            critical(
                f"{path} is format {data.get('format')!r} v{data.get('format_version')}, this luvc-export reads "
                f"{FORMAT!r} v{FORMAT_VERSION}; re-export with this version."
            )
        known = {field.name for field in dataclasses.fields(cls)}
        manifest = cls(**{key: value for key, value in data.items() if key in known})
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
        return Path(folder) / self.graphs[name]["file"]

    def bucket_for(self, image_size: tuple[int, int]) -> dict[str, Any]:
        """The bucket of a processed image size, or an error listing the exported sizes."""
        name = f"{image_size[0]}x{image_size[1]}"
        if name not in self.buckets:
            critical(
                f"Processed image size {name} is outside this export's profile (buckets: {sorted(self.buckets)}); "
                f"resize the image to a bucket, or re-export with --image-size {name}."
            )
        return self.buckets[name]


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
