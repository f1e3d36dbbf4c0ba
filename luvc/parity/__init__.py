"""Accuracy parity: PyTorch LUVC against the exported graphs (ONNX Runtime) and their engines (TensorRT).

Four levels, each with tolerances per precision (``tolerances.py``): output tensors, the LUVC selection (kept
tokens, OIM embeddings), first-token logits, and generated text. ``ParityFromExport`` measures them;
``write_report`` saves ``parity.json``, ``report.md`` and its plots.
"""

from luvc.parity.checker import ParityFromExport, check_parity
from luvc.parity.report import write_report
from luvc.parity.results import BackendResult, Check, LayerError, ParityResults
from luvc.parity.tolerances import TOLERANCES, Tolerances, tolerances_for

__all__ = [
    "TOLERANCES",
    "BackendResult",
    "Check",
    "LayerError",
    "ParityFromExport",
    "ParityResults",
    "Tolerances",
    "check_parity",
    "tolerances_for",
    "write_report",
]
