"""``OpenVinoSession``: an exported graph compiled by OpenVINO for the CPU, reading and writing the caller's tensors.

The graph is read from the export as it is (``luvc.runtime.openvino_graph``: the KV write converted, the products in
bf16 where the CPU has bf16 kernels) and compiled once. Each run hands OpenVINO the feeds and the output tensors as
``ov.Tensor`` views of the torch tensors' memory, so nothing is copied on the way in or out, and a KV cache bound as
both a ``past`` input and its ``present`` output is updated in place, as with ONNX Runtime. A graph imported from the
start-up cache reads its weights from the mapped blob; after its first run, when its products hold their own repacked
copies, the blob's pages leave the process's resident memory (``luvc.runtime.mapped_pages``).
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import torch

from luvc.errors import critical
from luvc.runtime.base_session import BaseSession, SessionSetup
from luvc.runtime.mapped_pages import release_mapped
from luvc.runtime.openvino_graph import (
    OpenVinoPrecision,
    bfloat16_products,
    choose_precision,
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

    def compile(self, path: Path, name: str, decode_step: bool = False) -> tuple[Any, Path | None]:
        """The graph at ``path`` compiled for the CPU in this runtime's precision. In f32 OpenVINO is given the path:
        its cache then keys the graph by its absolute path, size and modification time, and a cached graph is
        imported without being read or its weights hashed (2B widths, 8 layers, warm: 3.9 s for a request's four
        graphs against 5.9 s given the read model). In bf16 the model is read and its products rewritten first, and
        where its weight-only products run faster on integer kernels (``integer_kernels_faster``; ``decode_step``: the
        graph is the decode step's) it compiles under the f32 hint. Returns the compiled model and the cache folder
        its blob is in (None where the cache is off)."""
        config = {
            "INFERENCE_PRECISION_HINT": self.precision.precision,
            "PERFORMANCE_HINT": "LATENCY",
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": str(DYNAMIC_QUANTIZATION_GROUP),
        }
        with self._compiling:
            return self._compile(path, name, config, decode_step)

    def _compile(self, path: Path, name: str, config: dict[str, str], decode_step: bool) -> tuple[Any, Path | None]:
        from luvc import cache

        release = {"openvino_release": import_openvino().__version__}  # a compile of another release is another entry
        entry = None if self.cache_dir is None else cache.openvino_entry(self.cache_dir, path, config | release)
        source: Any = str(path)
        if self.precision.precision == "bf16":
            try:
                source = self.core.read_model(str(path))
            except RuntimeError as error:
                critical(f"{name}: OpenVINO could not read {path.name}: {_first_line(error)}; use --backend ort.")
            bfloat16_products(source)
            if integer_kernels_faster(source, decode_step):  # weight-only products on integer kernels, float ones bf16
                config = config | {"INFERENCE_PRECISION_HINT": "f32"}
        try:
            compiled = self.core.compile_model(source, "CPU", config | ({"CACHE_DIR": str(entry)} if entry else {}))
        except RuntimeError as error:
            doing = "compile" if self.precision.precision == "bf16" else "read or compile"
            critical(f"{name}: OpenVINO could not {doing} {path.name}: {_first_line(error)}; use --backend ort.")
        if entry is not None:
            cache.kept_openvino_compile(entry)
        return compiled, entry


def _first_line(error: Exception) -> str:
    """The line of an OpenVINO error that says what failed (its first lines name source files)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (useful or lines or ["unknown error"])[-1][:300]


class OpenVinoSession(BaseSession):
    """An exported graph compiled by OpenVINO (``setup.openvino``, an ``OpenVinoRuntime``) on the CPU."""

    def __init__(self, path: Path, inputs, outputs, setup: SessionSetup, name: str | None = None) -> None:
        super().__init__(name or f"openvino:{Path(path).stem}", inputs, outputs, device=setup.device)
        if self.device.type != "cpu":
            critical(f"{self.name}: the OpenVINO backend runs on the CPU; use --device cpu or --backend ort/trt.")
        self.path = Path(path)
        self.decode_step = setup.graph_kind == "decode"  # its precision may differ (``OpenVinoRuntime.compile``)
        self.runtime: OpenVinoRuntime = setup.openvino
        self.compiled: Any = None
        self.request: Any = None
        self._tensor: Any = None  # openvino.Tensor
        self.blob_folder: Path | None = None  # the start-up cache's folder of the compiled model, released after a run
        # compiled under the f32 hint where the runtime computes in bf16: its weight-only products on integer kernels
        self.integer_kernels = False

    def activate_impl(self) -> None:
        import openvino

        self._tensor = openvino.Tensor
        self.compiled, self.blob_folder = self.runtime.compile(self.path, self.name, self.decode_step)
        self.request = self.compiled.create_infer_request()
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.integer_kernels = self.runtime.precision.precision == "bf16" and hint == "f32"

    def infer_impl(self, feeds: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        for name, tensor in list(feeds.items()) + list(outputs.items()):
            self.request.set_tensor(name, self._tensor(tensor.numpy(), shared_memory=True))
        self.request.infer()
        if self.blob_folder is not None:  # the first run repacked the products' weights: the blob's pages are spare
            release_mapped(self.blob_folder)
            self.blob_folder = None

    def deactivate_impl(self) -> None:
        self.compiled = self.request = None
