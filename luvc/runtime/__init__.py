"""The runtime: exported graphs (ONNX Runtime) or their engines (TensorRT) behind one ``Pipeline``."""

BACKENDS = ("ort", "trt")  # ONNX Runtime over the export's graphs, or TensorRT over its engines
FIT_POLICIES = ("nearest", "pad", "exact")  # how a request's image is mapped onto a bucket (luvc.runtime.fit)
DEFAULT_FIT = "nearest"
FIT_HELP = (
    "how an image or clip the processor would not make into a bucket's size is fitted to one: nearest (default: "
    "resized to the bucket nearest its aspect ratio, content whole), pad (scaled inside it and padded, nothing "
    "distorted) or exact (refused)"
)
# whether each graph's shapes are captured once as CUDA graphs and replayed (luvc.runtime.replay)
CUDA_GRAPH_CHOICES = ("auto", "on", "off")
DEFAULT_CUDA_GRAPHS = "auto"  # on for a CUDA device
# device bytes of persistent buffers one replayed session keeps at most (luvc.runtime.replay; `plan` counts them)
MAX_BUFFER_BYTES = 1 << 30
