"""luvc-export: LUVC token compression for vision-language models, and its deployment toolkit."""

from luvc.compress.config import LUVCConfig
from luvc.errors import LuvcError

__version__ = "0.1.0"


def __getattr__(name: str):
    """``apply_luvc`` and ``load_model`` import PyTorch and transformers on first use, not with the package."""
    if name in ("apply_luvc", "load_model"):
        from luvc import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LUVCConfig", "LuvcError", "__version__", "apply_luvc", "load_model"]
