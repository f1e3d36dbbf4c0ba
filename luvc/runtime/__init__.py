"""The runtime: exported graphs (ONNX Runtime) or their engines (TensorRT) behind one ``Pipeline``."""

BACKENDS = ("ort", "trt")  # ONNX Runtime over the export's graphs, or TensorRT over its engines
FIT_POLICIES = ("nearest", "pad", "exact")  # how a request's image is mapped onto a bucket (luvc.runtime.fit)
DEFAULT_FIT = "nearest"
FIT_HELP = (
    "how an image or clip the processor would not make into a bucket's size is fitted to one: nearest (default: "
    "resized to the bucket nearest its aspect ratio, content whole), pad (scaled inside it and padded, nothing "
    "distorted) or exact (refused)"
)
