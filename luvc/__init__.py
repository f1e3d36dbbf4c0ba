"""luvc-export: LUVC token compression for vision-language models, and its deployment toolkit."""

from luvc.compress.config import LUVCConfig
from luvc.errors import LuvcError
from luvc.models import apply_luvc, load_model

__version__ = "0.1.0"

__all__ = ["LUVCConfig", "LuvcError", "__version__", "apply_luvc", "load_model"]
