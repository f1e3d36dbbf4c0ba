"""``OpenVinoSession``: an exported graph compiled by OpenVINO for the CPU, reading and writing the caller's tensors.

The graph is read from the export as it is (``luvc.runtime.openvino_graph``: the KV write converted, the products in
bf16 where the CPU has bf16 kernels) and compiled once. Each run hands OpenVINO the feeds and the output tensors as
``ov.Tensor`` views of the torch tensors' memory, so nothing is copied on the way in or out, and a KV cache bound as
both a ``past`` input and its ``present`` output is updated in place, as with ONNX Runtime. A graph imported from the
start-up cache reads its weights from the mapped blob; after its first run, when its products hold their own repacked
copies, the blob's pages leave the process's resident memory (``luvc.runtime.mapped_pages``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from luvc.errors import critical
from luvc.runtime.base_session import BaseSession, SessionSetup
from luvc.runtime.mapped_pages import release_mapped
from luvc.runtime.openvino_runtime import CompiledGraph, OpenVinoRuntime


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
        # compiled already (``luvc.runtime.opening``), else compiled on activation
        self._given = setup.opened if isinstance(setup.opened, CompiledGraph) else None
        self.request: Any = None
        self._tensor: Any = None  # openvino.Tensor
        self.blob_folder: Path | None = None  # the start-up cache's folder of the compiled model, released after a run
        # compiled under the f32 hint where the runtime computes in bf16: its weight-only products on integer kernels
        self.integer_kernels = False
        # compiled under the f16 hint where the runtime computes in bf16: an fp16 export's decode step
        self.float16_products = False

    def activate_impl(self) -> None:
        import openvino

        self._tensor = openvino.Tensor
        given, self._given = self._given, None  # a later activation compiles again
        self.compiled, self.blob_folder = given or self.runtime.compile(self.path, self.name, self.decode_step)
        self.request = self.compiled.create_infer_request()
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.integer_kernels = self.runtime.precision.precision == "bf16" and hint == "f32"
        self.float16_products = hint == "f16"

    def infer_impl(self, feeds: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        for name, tensor in list(feeds.items()) + list(outputs.items()):
            self.request.set_tensor(name, self._tensor(tensor.numpy(), shared_memory=True))
        self.request.infer()
        if self.blob_folder is not None:  # the first run repacked the products' weights: the blob's pages are spare
            release_mapped(self.blob_folder)
            self.blob_folder = None

    def deactivate_impl(self) -> None:
        self.compiled = self.request = None
