"""The LUVC TensorRT plugin library (built from ``plugins/`` by the root ``CMakeLists.txt``): loading it into the
TensorRT module before an engine with plugin nodes is parsed or deserialized, and the identity an engine folder
records so that ``run`` loads the same library and refuses another.

Only exports made with ``luvc-export export --plugin-nodes`` need it. TensorRT-RTX has no plugin layers (its
network API has no ``add_plugin*`` and its ONNX parser aborts the process on a plugin node), so those exports build
with full TensorRT (JetPack, NGC containers) only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from luvc.engines.trt_module import TensorRT
from luvc.errors import critical
from luvc.export.manifest import ExportManifest, sha256_file
from luvc.export.naming import PLUGIN_DOMAIN as DOMAIN
from luvc.export.naming import PLUGIN_OPS, PLUGIN_VERSION

CMAKE_HINT = "build it with `cmake -S . -B build/plugins && cmake --build build/plugins` (docs/tensorrt.md)"


@dataclasses.dataclass(frozen=True)
class PluginLibrary:
    """A plugin library file by path and sha256 (as the engine manifest records it)."""

    path: str
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> PluginLibrary:
        """The library at ``path``; a missing file is one clear error."""
        file = Path(path).expanduser()
        if not file.is_file():
            critical(f"Plugin library {path} does not exist; {CMAKE_HINT}.")
        return cls(str(file.resolve()), sha256_file(file))

    def load(self, tensorrt: TensorRT) -> None:
        """Register the library's plugin creators with ``tensorrt``'s plugin registry and check both LUVC plugins
        are there."""
        registry = tensorrt.module.get_plugin_registry()
        if registry.load_library(self.path) is None:
            critical(
                f"{tensorrt.describe()} could not load plugin library {self.path}: it must export getCreators and "
                f"setLoggerFinder and be built against this TensorRT's headers; {CMAKE_HINT}."
            )
        missing = [op for op in PLUGIN_OPS.values() if registry.get_creator(op, PLUGIN_VERSION, DOMAIN) is None]
        if missing:
            critical(f"Plugin library {self.path} has no {DOMAIN}::{', '.join(missing)} v{PLUGIN_VERSION} creator.")

    def check_same(self, other: PluginLibrary) -> None:
        """Refuse ``other`` unless it is this library (byte for byte)."""
        if other.sha256 != self.sha256:
            critical(
                f"Plugin library {other.path} (sha256 {other.sha256[:12]}) is not the one these engines were built "
                f"with ({self.path}, sha256 {self.sha256[:12]}); pass that library with --plugin-library or rebuild "
                "the engines with this one."
            )


def plugin_library_for_build(
    export: ExportManifest, tensorrt: TensorRT, path: str | Path | None
) -> PluginLibrary | None:
    """The plugin library a build of ``export`` needs (``path`` from ``--plugin-library``), checked against the
    export and the TensorRT module; ``None`` for exports without plugin nodes."""
    if not export.passes.plugin_nodes:
        if path is not None:
            critical(
                "This export has no plugin nodes, so --plugin-library has nothing to do; drop it, or re-export with "
                "--plugin-nodes."
            )
        return None
    if tensorrt.is_rtx:
        critical(
            f"This export holds {DOMAIN}::{'/'.join(PLUGIN_OPS.values())} plugin nodes, and {tensorrt.describe()} has "
            "no plugin layers; build it with full TensorRT (--tensorrt-module tensorrt: JetPack, NGC containers) or "
            "re-export without --plugin-nodes."
        )
    if path is None:
        critical(f"This export holds plugin nodes: pass --plugin-library PATH ({CMAKE_HINT}).")
    return PluginLibrary.of(path)


def plugin_library_for_run(recorded: PluginLibrary | None, path: str | Path | None) -> PluginLibrary | None:
    """The library to load before deserializing engines built with ``recorded`` (``path`` overrides where it is);
    a different library is refused."""
    if recorded is None:
        if path is not None:
            critical("These engines were built without a plugin library; drop --plugin-library.")
        return None
    if path is None and not Path(recorded.path).is_file():
        critical(
            f"These engines need the plugin library they were built with ({recorded.path}), which is not there; "
            "pass its new place with --plugin-library."
        )
    library = recorded if path is None else PluginLibrary.of(path)
    recorded.check_same(PluginLibrary.of(library.path))
    return library
