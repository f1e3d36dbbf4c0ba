"""``OpenVinoRuntime``: what the OpenVINO sessions of one pipeline share (the core, the precision its products compute
in, the compiled-model cache), and the compile of one exported graph for the CPU. It imports no torch, so that a CPU
start compiles its graphs while the runtime imports it (``luvc.runtime.opening``)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, NamedTuple

from luvc.errors import critical
from luvc.runtime.openvino_graph import (
    OpenVinoPrecision,
    bfloat16_products,
    choose_precision,
    float16_decode_faster,
    import_openvino,
    integer_kernels_faster,
    new_core,
)

# Weight-only INT8/INT4 products: OpenVINO's CPU plugin quantizes their activations on the fly, per group of this many
# input channels, and runs the product in integer kernels. Its default, 32, ran the int8w decode of Qwen2-VL-2B's
# widths at 18 tokens/s on an Intel Xeon with AMX; 256 at 21.5 (512 and 1536 at 22-23, 0, off, at 13-15; ONNX
# Runtime's 20-21). 256 divides most of the supported families' widths (1536, 2048, 3584, 8960, 11008, 2560, 10240;
# not InternVL3-1B's 896 nor SigLIP's 1152); a group that does not divide the widths ran as slowly as none (4096:
# 14.5 tokens/s), as if none were set.
DYNAMIC_QUANTIZATION_GROUP = 256


class CompiledGraph(NamedTuple):
    """An exported graph compiled by OpenVINO: the compiled ``model`` and the start-up cache's folder its blob is in
    (None where the cache is off)."""

    model: Any  # openvino.CompiledModel (openvino ships no type information)
    blob_folder: Path | None


@dataclasses.dataclass
class OpenVinoRuntime:
    """What the OpenVINO sessions of one pipeline share: the ``core`` (its conversions and compiled-model cache) and
    the precision its products compute in."""

    core: Any  # openvino.Core (openvino ships no type information)
    precision: OpenVinoPrecision
    cache_dir: Path | None = None  # each graph's compiled models in a folder of it (``luvc.cache.openvino_entry``)
    # one compile at a time: each ends by sealing its folder's blobs and measuring every folder of the cache against
    # its limit
    _compiling: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def create(cls, requested_precision: str = "auto", cache_dir: Path | None = None) -> OpenVinoRuntime:
        """A runtime whose compiled models OpenVINO keeps in ``cache_dir`` (``luvc.cache.openvino_folder``; None: each
        start compiles)."""
        core = new_core()
        return cls(core, choose_precision(core, requested_precision), cache_dir)

    def compile(self, path: Path, name: str, decode_step: bool = False) -> CompiledGraph:
        """The graph at ``path`` compiled for the CPU in this runtime's precision. In f32 OpenVINO is given the path:
        its cache then keys the graph by its absolute path, size and modification time, and a cached graph is
        imported without being read or its weights hashed (2B widths, 8 layers, warm: 3.9 s for a request's four
        graphs against 5.9 s given the read model). In bf16 the model is read and its products rewritten first, and
        where its weight-only products run faster on integer kernels (``integer_kernels_faster``; ``decode_step``: the
        graph is the decode step's) it compiles under the f32 hint; an fp16 export's decode step on a CPU with f16
        kernels compiles under the f16 hint instead, its products as they are (``float16_decode_faster``)."""
        config = {
            "INFERENCE_PRECISION_HINT": self.precision.precision,
            "PERFORMANCE_HINT": "LATENCY",
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": str(DYNAMIC_QUANTIZATION_GROUP),
        }
        with self._compiling:
            return self._compile(path, name, config, decode_step)

    def _compile(self, path: Path, name: str, config: dict[str, str], decode_step: bool) -> CompiledGraph:
        from luvc import cache

        source: Any = str(path)
        if self.precision.precision == "bf16":
            try:
                source = self.core.read_model(str(path))
            except RuntimeError as error:
                critical(f"{name}: OpenVINO could not read {path.name}: {_first_line(error)}; use --backend ort.")
            if self.precision.float16_decode and float16_decode_faster(source, decode_step):
                config = config | {"INFERENCE_PRECISION_HINT": "f16"}
            else:
                bfloat16_products(source)
                if integer_kernels_faster(source, decode_step):  # weight-only products on integer kernels, float bf16
                    config = config | {"INFERENCE_PRECISION_HINT": "f32"}
        # keyed by the compile's own settings, the hint chosen for this graph included: a change of that choice (a new
        # rule, another CPU) is another entry, the old one ages out; another release of OpenVINO is another entry too
        release = {"openvino_release": import_openvino().__version__}
        entry = None if self.cache_dir is None else cache.openvino_entry(self.cache_dir, path, config | release)
        try:
            compiled = self.core.compile_model(source, "CPU", config | ({"CACHE_DIR": str(entry)} if entry else {}))
        except RuntimeError as error:
            doing = "compile" if self.precision.precision == "bf16" else "read or compile"
            critical(f"{name}: OpenVINO could not {doing} {path.name}: {_first_line(error)}; use --backend ort.")
        if entry is not None:
            cache.kept_openvino_compile(entry)
        return CompiledGraph(compiled, entry)


def _first_line(error: Exception) -> str:
    """The line of an OpenVINO error that says what failed (its first lines name source files)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (useful or lines or ["unknown error"])[-1][:300]
