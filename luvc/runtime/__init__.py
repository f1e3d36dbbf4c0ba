"""The runtime: exported graphs (ONNX Runtime) or their engines (TensorRT) behind one ``Pipeline``."""

# ONNX Runtime over the export's graphs, TensorRT over its engines, or OpenVINO over the export's graphs (CPU)
BACKENDS = ("ort", "trt", "openvino")
BACKEND_CHOICES = (*BACKENDS, "auto")  # auto: the one that answers first here, measured once (backend_choice)
BACKEND_HELP = (
    "ort (default: ONNX Runtime), trt (the TensorRT engines of --engines), openvino (OpenVINO on the CPU, bf16 "
    "where the CPU has AMX or AVX-512 BF16) or auto (the one that answers first here, measured once; docs/run.md)"
)
FIT_POLICIES = ("nearest", "pad", "exact")  # how a request's image is mapped onto a bucket (luvc.runtime.fit)
DEFAULT_FIT = "nearest"
FIT_HELP = (
    "how an image or clip the processor would not make into a bucket's size is fitted to one: nearest (default: "
    "resized to the bucket nearest its aspect ratio, content whole), pad (scaled inside it and padded, nothing "
    "distorted) or exact (refused)"
)
# where an image's pixel arithmetic runs (luvc.runtime.pixels): device, from 8-bit pixels, or the transformers processor
DEVICE_PREPROCESSING = "device"
PREPROCESSING = (DEVICE_PREPROCESSING, "processor")
PREPROCESSING_HELP = (
    "where an image's pixels are made: device (default: the image goes to the pipeline's device as 8-bit pixels and "
    "is rescaled, normalised and laid out there, to the same values as the model's image processor) or processor "
    "(the transformers image processor on the host, as PyTorch sees them; slower)"
)
