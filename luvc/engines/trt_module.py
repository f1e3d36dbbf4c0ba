"""Which TensorRT Python module is present: full ``tensorrt`` (10.x, 11.x) or ``tensorrt_rtx`` (as Polygraphy
chooses between them), and what that means for the build path."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from types import ModuleType

from luvc.errors import critical

MODULE_NAMES = ("tensorrt", "tensorrt_rtx")


@dataclasses.dataclass(frozen=True)
class TensorRT:
    """The imported module, its name and version."""

    module: ModuleType
    name: str
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    @property
    def strongly_typed(self) -> bool:
        """TensorRT 11 and TensorRT-RTX take precision from the ONNX (casts, Q/DQ); TensorRT 10 uses builder flags."""
        return self.is_rtx or self.major >= 11

    @property
    def parses_tensor_scatter(self) -> bool:
        """The ONNX parser maps opset 24 ``TensorScatter`` to the KV-cache update layer (TensorRT >= 10.15, RTX)."""
        major, minor = (int(part) for part in self.version.split(".")[:2])
        return self.is_rtx or (major, minor) >= (10, 15)

    @property
    def captures_cuda_graphs(self) -> bool:
        """TensorRT-RTX (1.2 on) captures and replays CUDA graphs itself (``IRuntimeConfig.cuda_graph_strategy``)."""
        return self.is_rtx and hasattr(self.module, "CudaGraphStrategy")

    def describe(self) -> str:
        return f"{self.name} {self.version}"


def import_tensorrt(prefer: str | None = None) -> TensorRT:
    """``tensorrt`` if installed, else ``tensorrt_rtx`` (``prefer`` picks one); a clear error when neither is."""
    names = (prefer,) if prefer else MODULE_NAMES
    for name in names:
        if name not in MODULE_NAMES:
            critical(f"Unknown TensorRT module {name!r}; use one of {list(MODULE_NAMES)}.")
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return TensorRT(module, name, module.__version__)
    critical(
        f"No TensorRT Python module ({' or '.join(names)}) is installed. On a Jetson use JetPack's TensorRT; "
        f"elsewhere run `{sys.executable} -m pip install tensorrt-rtx` (builds without a GPU) or install `tensorrt` "
        "from NVIDIA's index (`pip install tensorrt --extra-index-url https://pypi.nvidia.com`)."
    )
