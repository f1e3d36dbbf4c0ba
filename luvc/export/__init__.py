"""torch -> ONNX for LUVC-compressed VLMs: graph modules, exporter, naming, lint, manifest, graph passes."""
