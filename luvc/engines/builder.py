"""Build TensorRT engines from an export folder, with ``tensorrt`` (10.x, 11.x) or ``tensorrt_rtx``.

``EngineFromOnnx`` parses one graph and builds one serialized engine for a target: strongly typed networks on
TensorRT 11 and TensorRT-RTX (precision comes from the ONNX dtypes and Q/DQ), builder flags on TensorRT 10
(JetPack 6). Profiles come from the export manifest (``luvc.engines.profiles``). ``EnginesFromExport`` builds
every graph into a staging folder, writes the engine manifest and renames the folder when complete.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

import onnx
from rich.progress import Progress, TaskID

from luvc import interrupts
from luvc.engines.cuda_device import device_capability
from luvc.engines.manifest import ENGINES_OUTPUT, BuiltBy, EngineEntry, EngineManifest, ExportReference, SourceGraph
from luvc.engines.plugin_library import PluginLibrary, plugin_library_for_build
from luvc.engines.profiles import input_profile
from luvc.engines.targets import Target, get_target
from luvc.engines.trt_module import TensorRT, import_tensorrt
from luvc.engines.weight_inputs import (
    LAYOUTS,
    engine_graph,
    external_initializers,
    shareable_weights,
    with_weight_inputs,
)
from luvc.errors import critical
from luvc.export.manifest import WEIGHTS_FILE, ExportManifest, ExternalTensor, sha256_file
from luvc.export.manifest_entries import TensorEntry
from luvc.loaders import BaseLoader, as_path, functional, loaded_path
from luvc.progress import graph_progress
from luvc.staging import output_claim, staged_folder

# TensorRT 10's builder flags by export precision, for a network that is not strongly typed: FP16 for every reduced
# precision's float parts; INT8 for explicit Q/DQ from `luvc-export calibrate` and for weight-only exports (the LM
# head's INT8 weights); FP8 and INT4 where the release has them (weight-only INT4 Q/DQ from TensorRT 10.x)
PRECISION_FLAGS = {
    "fp32": (),
    "fp16": ("FP16",),
    "int8": ("FP16", "INT8"),
    "int8w": ("FP16", "INT8"),
    "int4": ("FP16", "INT8", "INT4"),
    "fp8": ("FP16", "FP8"),
}
BUILD_LOG = "build.log"  # --verbose: TensorRT's whole log of the build, in the engine folder
DTYPE_NAMES = {  # TensorRT DataType name -> the export manifest's ONNX dtype name
    "FLOAT": "float",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
    "FP8": "float8e4m3fn",
}


def _io(tensors) -> tuple[TensorEntry, ...]:
    """The network's I/O as manifest entries (dynamic dimensions are -1)."""
    return tuple(
        TensorEntry(t.name, DTYPE_NAMES.get(t.dtype.name, t.dtype.name.lower()), tuple(t.shape)) for t in tensors
    )


def rtx_compute_capabilities(target: Target, tensorrt: TensorRT) -> list[str]:
    """TensorRT-RTX ``ComputeCapability`` names of ``target``; an error when RTX cannot build for it."""
    names = [f"SM{major}{minor}" for major, minor in target.compute_capabilities]
    missing = [name for name in names if not hasattr(tensorrt.module.ComputeCapability, name)]
    if missing:
        known = [n for n in tensorrt.module.ComputeCapability.__members__ if n.startswith("SM")]
        critical(
            f"{tensorrt.describe()} cannot build for target {target.name} ({', '.join(missing)}): it targets "
            f"RTX-class GPUs {known}. Build {target.name} engines with full TensorRT."
        )
    return names


@dataclasses.dataclass
class EngineFromOnnx(BaseLoader[tuple]):
    """Loader: ONNX file -> ``(serialized engine bytes, network inputs, network outputs)``; ``timing_cache_out`` holds
    the timing cache after the build (full TensorRT, when one was given). With ``weights_layout="shared"`` the
    graph's shareable weights (``luvc.engines.weight_inputs``) become network inputs, listed in ``weights_out`` and
    left out of the returned inputs."""

    onnx_path: Path
    profile: dict[str, tuple[list[int], list[int], list[int]]]
    target: Target
    tensorrt: TensorRT
    precision: str
    timing_cache: bytes | None = None
    hardware_compatible: bool = False
    dla_core: int | None = None
    on_phase: Callable[[str], None] | None = None
    log_file: Path | None = None
    weights_layout: str = "embedded"
    kind: str = ""  # the graph's kind (the manifest's): with ``float_tables``, what ``engine_graph`` changes
    float_tables: Mapping[str, onnx.TensorProto] | None = None  # the export's external tensors, for the shared layout
    timing_cache_out: bytes | None = dataclasses.field(default=None, init=False)
    weights_out: tuple[ExternalTensor, ...] = dataclasses.field(default=(), init=False)

    def call_impl(self) -> tuple:
        logger = _build_log(self.tensorrt.module, self.log_file)
        try:
            return self._build(logger)
        finally:
            logger.close()

    def _build(self, logger):
        trt = self.tensorrt.module
        builder = trt.Builder(logger)
        strongly_typed = self.tensorrt.strongly_typed
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not self._parse(parser):
            errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
            critical(f"{self.tensorrt.describe()} could not parse {self.onnx_path.name}: {errors}")
        config = builder.create_builder_config()
        self._configure(trt, builder, config, strongly_typed)
        with interrupts.deferred():  # the progress monitor cancels the build; leaving the block raises the interrupt
            engine = builder.build_serialized_network(network, config)
        if engine is None:
            reason = logger.errors[-1] if logger.errors else "no error was logged"
            critical(
                f"{self.tensorrt.describe()} failed to build {self.onnx_path.name} for target {self.target.name} "
                f"({reason}); --verbose keeps TensorRT's whole log of the build in build.log."
            )
        if self.timing_cache is not None and not self.tensorrt.is_rtx:
            self.timing_cache_out = bytes(config.get_timing_cache().serialize())
        weights = {tensor.name for tensor in self.weights_out}
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        outputs = [network.get_output(i) for i in range(network.num_outputs)]
        return bytes(engine), _io(i for i in inputs if i.name not in weights), _io(outputs)

    def _parse(self, parser) -> bool:
        """Parse the graph; in the shared layout, as ``engine_graph`` builds it (an INT8 LM head outside decode reads
        its float table) with its shareable weights turned into inputs (the other external tensors are still read
        from beside the graph file)."""
        if self.weights_layout == "shared":
            model = onnx.load(str(self.onnx_path), load_external_data=False)
            model = engine_graph(model, self.kind, self.float_tables or {})
            self.weights_out = tuple(shareable_weights(model))
            if self.weights_out:
                graph = with_weight_inputs(model, list(self.weights_out))
                return parser.parse(graph.SerializeToString(), str(self.onnx_path))
        return parser.parse_from_file(str(self.onnx_path))

    def _configure(self, trt, builder, config, strongly_typed: bool) -> None:
        target = self.target
        config.builder_optimization_level = target.optimization_level
        if target.workspace_bytes is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, target.workspace_bytes)
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in self.profile.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
        if not strongly_typed:  # TensorRT 10: precision through builder flags
            for flag in PRECISION_FLAGS.get(self.precision, ()):
                if hasattr(trt.BuilderFlag, flag):  # FP8 and INT4 from TensorRT 10.x
                    config.set_flag(getattr(trt.BuilderFlag, flag))
        # a float32 tensor is float32 for its accuracy (an fp32 export; an fp16 export's norms, softmax and SPU scores):
        # no TF32 products (10 bits of mantissa), which TensorRT allows by default
        if hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        self._configure_device(trt, config)
        if hasattr(trt, "IProgressMonitor"):
            config.progress_monitor = _progress_monitor(trt, self.on_phase or (lambda phase: None))

    def _configure_device(self, trt, config) -> None:
        """What the engine runs on: TensorRT-RTX's compute capabilities or TensorRT's timing cache, hardware
        compatibility, a DLA core."""
        target = self.target
        if self.tensorrt.is_rtx:
            names = rtx_compute_capabilities(target, self.tensorrt)
            config.num_compute_capabilities = len(names)
            for index, name in enumerate(names):
                config.set_compute_capability(getattr(trt.ComputeCapability, name), index)
        elif self.timing_cache is not None:
            cache = config.create_timing_cache(self.timing_cache)
            config.set_timing_cache(cache, ignore_mismatch=False)
        if self.hardware_compatible:
            config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
        if self.dla_core is not None:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = self.dla_core
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _build_log(trt, path: Path | None):
    """A TensorRT logger that keeps the errors (the reason of a failed build) and, with ``path``, appends every
    message of every severity to that file (``--verbose``: tens of thousands of lines a build, never the terminal)."""

    class BuildLog(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.file = None if path is None else open(path, "a", encoding="utf-8")  # closed by close()

        def log(self, severity, msg) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            if self.file is not None:
                self.file.write(f"[{severity.name}] {msg}\n")

        def close(self) -> None:
            if self.file is not None:
                self.file.close()
                self.file = None

    return BuildLog()


def _show_phase(progress: Progress, task: TaskID, phase: str) -> None:
    """Show a build's ``phase`` on its ``task`` row."""
    progress.update(task, phase=phase[:40])


def _progress_monitor(trt, on_phase):
    class PhaseMonitor(trt.IProgressMonitor):
        """Reports the current build phase name to ``on_phase``; cancels the build on Ctrl-C or SIGTERM."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            on_phase(phase_name)

        def step_complete(self, phase_name, step):
            return not interrupts.requested()

        def phase_finish(self, phase_name):
            pass

    return PhaseMonitor()


@dataclasses.dataclass
class EnginesFromExport(BaseLoader[Path]):
    """Loader: export folder (or a loader that makes one) -> engine folder (one engine per graph) for ``target``;
    returns the folder."""

    export_dir: str | Path | BaseLoader[Path]
    target: str
    out: str | Path
    timing_cache: str | Path | None = None
    hardware_compatible: bool = False
    dla_core: int | None = None
    module: str | None = None
    overwrite: bool = False
    show_progress: bool = True
    verbose: bool = False
    plugin_library: str | Path | None = None
    weights_layout: str | None = None  # "shared" (default) or "embedded" (default with a DLA core)

    def __post_init__(self) -> None:
        self.export_dir, self.out, self.timing_cache = (
            as_path(self.export_dir),
            as_path(self.out),
            as_path(self.timing_cache),
        )
        # the layout built: the one asked for, else the default (which falls back to embedded without a word)
        self.layout = self.weights_layout or ("embedded" if self.dla_core is not None else "shared")

    @property
    def export_path(self) -> Path:
        """The export folder (once a loader that makes it has run)."""
        return loaded_path(self.export_dir)

    def _check_options(self, target: Target, tensorrt: TensorRT, export: ExportManifest) -> None:
        target.check_precision(export.precision)
        if export.kv_cache.update == "tensor-scatter" and not tensorrt.parses_tensor_scatter:
            critical(
                f"{tensorrt.describe()} cannot parse the decode graph's TensorScatter KV update (TensorRT >= 10.15 "
                "or TensorRT-RTX can); re-export with --kv-update scatter-elements for this TensorRT."
            )
        if tensorrt.is_rtx:
            rtx_compute_capabilities(target, tensorrt)
        if self.hardware_compatible and not target.supports_hardware_compatibility:
            critical(f"Target {target.name} has no hardware-compatible engines; drop --hardware-compatible.")
        if self.dla_core is not None and (not target.supports_dla or tensorrt.is_rtx):
            critical(f"DLA needs target orin and JetPack's TensorRT; target {target.name} with {tensorrt.describe()}.")
        if self.layout not in LAYOUTS:
            critical(f"Unknown weights layout {self.layout!r}; use one of {list(LAYOUTS)} (--weights).")
        if self.dla_core is not None and self.layout == "shared":
            critical("DLA layers need their weights inside the engine; build with --weights embedded for --dla-core.")
        if self.weights_layout == "shared" and not (self.export_path / WEIGHTS_FILE).is_file():
            critical(
                f"--weights shared puts the export's {WEIGHTS_FILE} on the device once for every engine, but "
                f"{self.export_dir} has none (its graphs hold their weights), so every engine embeds its own; drop "
                "--weights, or pass --weights embedded."
            )
        capability = device_capability()
        if not tensorrt.is_rtx and capability is not None and not self.hardware_compatible:
            if capability not in target.compute_capabilities:
                critical(
                    f"This GPU is SM {capability[0]}.{capability[1]} but target {target.name} is "
                    f"{target.description}; TensorRT builds for the GPU it runs on. Build on a {target.name} GPU "
                    "(Jetson engines on the Jetson) or pass --hardware-compatible."
                )

    def call_impl(self) -> Path:
        export = ExportManifest.load(self.export_path, engines_flags=None)
        target = get_target(self.target)
        tensorrt = import_tensorrt(self.module)
        self._check_options(target, tensorrt, export)
        plugins = plugin_library_for_build(export, tensorrt, self.plugin_library)
        with output_claim(
            Path(self.out), self.overwrite, ENGINES_OUTPUT, (self.export_path,)
        ):  # before building anything
            if plugins is not None:
                plugins.load(tensorrt)  # before any graph is parsed
            return self._build(export, target, tensorrt, plugins)

    def _build(self, export: ExportManifest, target: Target, tensorrt: TensorRT, plugins: PluginLibrary | None) -> Path:
        timing_cache = as_path(self.timing_cache)
        cache = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
        with staged_folder(Path(self.out), self.overwrite, ENGINES_OUTPUT, (self.export_path,)) as staging:
            engines = self._build_all(export, target, tensorrt, staging, cache)
            manifest = EngineManifest(
                tensorrt=BuiltBy(tensorrt.name, tensorrt.version),
                target=target.to_dict(),
                precision=export.precision,
                strongly_typed=tensorrt.strongly_typed,
                hardware_compatible=self.hardware_compatible,
                dla_core=self.dla_core,
                export=ExportReference(
                    model=export.model,
                    luvc=export.luvc,
                    budgets={name: list(bucket.budgets) for name, bucket in export.buckets.items()},
                    manifest_sha256=sha256_file(self.export_path / "manifest.json"),
                ),
                engines=engines,
                plugin_library=plugins,
                weights_layout="shared" if any(entry.weights for entry in engines.values()) else "embedded",
            )
            manifest.save(staging)
        return Path(self.out)

    def _build_all(self, export: ExportManifest, target: Target, tensorrt: TensorRT, staging: Path, cache: bytes):
        engines = {}
        tables = None
        if self.layout == "shared":  # where each external tensor is, for a graph that reads another's
            files = [self.export_path / graph.file for graph in export.graphs.values()]
            tables = external_initializers(onnx.load(str(path), load_external_data=False) for path in files)
        with graph_progress(bool(self.show_progress), "phase") as progress:
            for name, graph in export.graphs.items():
                task = progress.add_task(name, total=1, phase="parsing")
                profile = input_profile(export, name)
                loader = EngineFromOnnx(
                    self.export_path / graph.file,
                    profile,
                    target,
                    tensorrt,
                    export.precision,
                    timing_cache=cache if self.timing_cache else None,
                    hardware_compatible=self.hardware_compatible,
                    dla_core=self.dla_core,
                    on_phase=functools.partial(_show_phase, progress, task),
                    log_file=staging / BUILD_LOG if self.verbose else None,
                    weights_layout=self.layout,
                    kind=graph.kind,
                    float_tables=tables,
                )
                engine, inputs, outputs = loader()
                if loader.timing_cache_out is not None:
                    cache = loader.timing_cache_out
                path = staging / f"{name}.engine"
                partial = path.with_name(path.name + ".partial")
                partial.write_bytes(engine)
                partial.replace(path)
                engines[name] = EngineEntry(
                    file=path.name,
                    bytes=len(engine),
                    sha256=hashlib.sha256(engine).hexdigest(),
                    source=SourceGraph(graph.file, export.files[graph.file]),
                    inputs=inputs,
                    outputs=outputs,
                    profile={key: [list(shape) for shape in shapes] for key, shapes in profile.items()},
                    weights=loader.weights_out,
                )
                progress.update(task, completed=1, phase=f"done, {len(engine) / 1e6:.1f} MB")
        timing_cache = as_path(self.timing_cache)
        if timing_cache is not None and not tensorrt.is_rtx:
            partial = timing_cache.with_name(timing_cache.name + ".partial")
            partial.write_bytes(cache)
            partial.replace(timing_cache)
        return engines


build_engines = functional(EnginesFromExport, "build_engines")
