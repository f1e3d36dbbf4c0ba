"""onnx-graphsurgeon passes over exported graphs. Each pass is ``def name(graph: gs.Graph) -> gs.Graph``."""

from luvc.export.passes.fp32_islands import keep_fp32_islands

__all__ = ["keep_fp32_islands"]
