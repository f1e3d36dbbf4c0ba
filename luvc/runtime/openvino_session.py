"""``OpenVinoSession``: an exported graph compiled by OpenVINO for the CPU, reading and writing the caller's tensors.

The graph is read from the export as it is (``luvc.runtime.openvino_graph``: the KV write converted, the products in
bf16 where the CPU has bf16 kernels) and compiled once. Each run hands OpenVINO the feeds and the output tensors as
``ov.Tensor`` views of the torch tensors' memory, so nothing is copied on the way in or out, and a KV cache bound as
both a ``past`` input and its ``present`` output is updated in place, as with ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from luvc.errors import critical
from luvc.runtime.base_session import BaseSession, SessionSetup
from luvc.runtime.openvino_graph import OpenVinoPrecision, bfloat16_products, choose_precision, new_core


@dataclasses.dataclass
class OpenVinoRuntime:
    """What the OpenVINO sessions of one pipeline share: the ``core`` (its conversions and compiled-model cache) and
    the precision its products compute in."""

    core: Any  # openvino.Core (openvino ships no type information)
    precision: OpenVinoPrecision
    cache_dir: Path | None = None

    @classmethod
    def create(cls, requested_precision: str = "auto", cache_dir: Path | None = None) -> OpenVinoRuntime:
        """A runtime whose compiled models OpenVINO keeps in ``cache_dir`` (``luvc.cache.openvino_folder``; None: each
        start compiles)."""
        core = new_core(cache_dir)
        return cls(core, choose_precision(core, requested_precision), cache_dir)

    def compile(self, path: Path, name: str):
        """The graph at ``path`` read and compiled for the CPU in this runtime's precision."""
        try:
            model = self.core.read_model(str(path))
        except RuntimeError as error:
            critical(f"{name}: OpenVINO could not read {path.name}: {_first_line(error)}; use --backend ort.")
        if self.precision.precision == "bf16":
            bfloat16_products(model)
        config = {"INFERENCE_PRECISION_HINT": self.precision.precision, "PERFORMANCE_HINT": "LATENCY"}
        try:
            compiled = self.core.compile_model(model, "CPU", config)
        except RuntimeError as error:
            critical(f"{name}: OpenVINO could not compile {path.name}: {_first_line(error)}; use --backend ort.")
        if self.cache_dir is not None:
            from luvc import cache

            cache.seal_openvino_blobs(self.cache_dir)
        return compiled


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
        self.runtime: OpenVinoRuntime = setup.openvino
        self.compiled: Any = None
        self.request: Any = None
        self._tensor: Any = None  # openvino.Tensor

    def activate_impl(self) -> None:
        import openvino

        self._tensor = openvino.Tensor
        self.compiled = self.runtime.compile(self.path, self.name)
        self.request = self.compiled.create_infer_request()

    def infer_impl(self, feeds: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        for name, tensor in list(feeds.items()) + list(outputs.items()):
            self.request.set_tensor(name, self._tensor(tensor.numpy(), shared_memory=True))
        self.request.infer()

    def deactivate_impl(self) -> None:
        self.compiled = self.request = None
