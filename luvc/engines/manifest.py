"""The engine folder's ``manifest.json``, and the checks made before an engine is used.

``EngineManifest.check_engine`` refuses, each with its own message: an engine file that is missing, truncated or
changed; an engine built by another TensorRT module or version; a GPU whose compute capability the engine was not
built for; an engine built from a different export than the one at hand.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from luvc.compress.config import LUVCConfig
from luvc.engines.plugin_library import PluginLibrary
from luvc.engines.trt_module import TensorRT
from luvc.errors import critical
from luvc.export.manifest import ENGINE_FORMAT, MANIFEST_NAME, ExportManifest, ExternalTensor, sha256_file
from luvc.export.manifest_entries import ModelEntry, TensorEntry
from luvc.staging import OutputKind, partials_note

FORMAT = ENGINE_FORMAT
ENGINES_OUTPUT = OutputKind("an engine folder", MANIFEST_NAME, FORMAT)
FORMAT_VERSION = 3  # 2: typed entries (as the export manifest's v3); 3: weights as engine inputs


@dataclasses.dataclass(frozen=True)
class BuiltBy:
    """The TensorRT module and version that built the engines (they load only in the same)."""

    module: str
    version: str


@dataclasses.dataclass(frozen=True)
class SourceGraph:
    """The ONNX graph an engine was built from, by file name and sha256 in the export."""

    file: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class EngineEntry:
    """One engine file: its size and sha256, its source graph, its I/O as the network was built, and its
    optimization profile (``{input: [min, opt, max]}``); ``weights``: the inputs bound to tensors of the export's
    ``weights.data`` (the shared layout, ``luvc.engines.weight_inputs``), by name and place in that file."""

    file: str
    bytes: int
    sha256: str
    source: SourceGraph
    inputs: tuple[TensorEntry, ...]
    outputs: tuple[TensorEntry, ...]
    profile: dict[str, list[list[int]]]
    weights: tuple[ExternalTensor, ...] = ()


@dataclasses.dataclass(frozen=True)
class ExportReference:
    """The export the engines were built from: its model, LUVC config, per-bucket budgets and manifest sha256."""

    model: ModelEntry
    luvc: LUVCConfig
    budgets: dict[str, list[int]]
    manifest_sha256: str


@dataclasses.dataclass(frozen=True)
class EngineManifest:
    """The engine folder's manifest: who built it for which target (``Target.to_dict``), how, from which export,
    and one ``EngineEntry`` per graph."""

    tensorrt: BuiltBy
    target: dict[str, Any]
    precision: str
    strongly_typed: bool
    hardware_compatible: bool
    dla_core: int | None
    export: ExportReference
    engines: dict[str, EngineEntry]
    plugin_library: PluginLibrary | None = None  # loaded before the engines deserialize (plugin-node exports)
    weights_layout: str = "embedded"  # "shared": weights are engine inputs (luvc.engines.weight_inputs)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = MANIFEST_NAME) -> EngineManifest:
        """The manifest of a parsed engine ``manifest.json``; a missing field is one clear error."""
        try:
            export = data["export"]
            return cls(
                tensorrt=BuiltBy(**data["tensorrt"]),
                target=data["target"],
                precision=data["precision"],
                strongly_typed=data["strongly_typed"],
                hardware_compatible=data["hardware_compatible"],
                dla_core=data["dla_core"],
                export=ExportReference(
                    **{**export, "model": ModelEntry(**export["model"]), "luvc": LUVCConfig.from_dict(export["luvc"])}
                ),
                engines={name: _engine(entry) for name, entry in data["engines"].items()},
                plugin_library=PluginLibrary(**data["plugin_library"]) if data.get("plugin_library") else None,
                weights_layout=data["weights_layout"],
                format=data["format"],
                format_version=data["format_version"],
            )
        except (KeyError, TypeError) as error:
            critical(f"{source} does not have the fields this luvc-export reads ({error}); rebuild the engines.")

    def save(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> EngineManifest:
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            critical(
                f"{folder} has no {MANIFEST_NAME}; it is not a finished engine folder (run `luvc-export build`)."
                + partials_note(Path(folder))
            )
        data = json.loads(path.read_text())
        if data.get("format") == FORMAT and data.get("format_version") != FORMAT_VERSION:
            critical(
                f"{path} is engine format v{data.get('format_version')} and this luvc-export reads "
                f"v{FORMAT_VERSION}; rebuild the engines with `luvc-export build`."
            )
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            critical(
                f"{path} is {data.get('format')!r} v{data.get('format_version')}, not an engine manifest "
                f"{FORMAT!r} v{FORMAT_VERSION}; point at a folder made by `luvc-export build`."
            )
        return cls.from_dict(data, str(path))

    def supports(self, capability: tuple[int, int]) -> bool:
        """Whether an engine of this folder may run on a GPU of compute ``capability``."""
        if self.hardware_compatible:
            return capability >= (8, 0)
        return f"{capability[0]}.{capability[1]}" in self.target["compute_capabilities"]

    def check_file(
        self, folder: str | Path, name: str, export: ExportManifest | None = None, hashes: bool = True
    ) -> Path:
        """The path of engine ``name`` after the checks that need no TensorRT: listed, present, of its recorded size
        (and sha256, with ``hashes``), built from ``export`` when given."""
        if name not in self.engines:
            critical(f"The engine folder has no engine {name!r}; it has {sorted(self.engines)}.")
        entry = self.engines[name]
        path = Path(folder) / entry.file
        if not path.is_file():
            critical(f"{path} is missing; copy the whole engine folder (see {MANIFEST_NAME}).")
        size = path.stat().st_size
        if size != entry.bytes:
            critical(f"{path} is truncated or padded: {size} bytes, the manifest says {entry.bytes}; rebuild it.")
        if hashes and sha256_file(path) != entry.sha256:
            critical(f"{path} does not match its sha256 in {MANIFEST_NAME}; the file changed, rebuild it.")
        if export is not None:
            source = entry.source
            if export.files.get(source.file) != source.sha256:
                critical(
                    f"{path.name} was built from another export: {source.file} has a different sha256 in the "
                    "export manifest. Rebuild the engines from this export folder."
                )
        return path

    def check_files(self, folder: str | Path, export: ExportManifest, hashes: bool = True) -> None:
        """``check_file`` for every graph of ``export``: the folder holds all its engines, intact, built from it."""
        for name in export.graphs:
            self.check_file(folder, name, export, hashes)

    def check_engine(
        self,
        folder: str | Path,
        name: str,
        tensorrt: TensorRT,
        device_capability: tuple[int, int] | None = None,
        export: ExportManifest | None = None,
    ) -> bytes:
        """The bytes of engine ``name`` after every check (see the module docstring)."""
        path = self.check_file(folder, name, export)
        built = self.tensorrt
        if (built.module, built.version) != (tensorrt.name, tensorrt.version):
            critical(
                f"{path.name} was built by {built.module} {built.version} but this process has "
                f"{tensorrt.describe()}; engines only load in the TensorRT that built them. Rebuild with "
                "`luvc-export build` here (on a Jetson, with JetPack's TensorRT)."
            )
        if device_capability is not None and not self.supports(device_capability):
            critical(
                f"{path.name} was built for target {self.target['name']} (SM {self.target['compute_capabilities']}) "
                f"but this GPU is SM {device_capability[0]}.{device_capability[1]}; rebuild with the matching "
                "--target (or --hardware-compatible on Ampere and newer)."
            )
        return path.read_bytes()


def _engine(entry: dict[str, Any]) -> EngineEntry:
    tensors = {key: TensorEntry.all_of(entry[key]) for key in ("inputs", "outputs")}
    weights = tuple(ExternalTensor(**{**w, "shape": tuple(w["shape"])}) for w in entry["weights"])
    return EngineEntry(**{**entry, **tensors, "source": SourceGraph(**entry["source"]), "weights": weights})
