"""The runtime: exported graphs (ONNX Runtime) or their engines (TensorRT) behind one ``Pipeline``."""

BACKENDS = ("ort", "trt")  # ONNX Runtime over the export's graphs, or TensorRT over its engines
