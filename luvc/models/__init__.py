"""Family adapters (one file per VLM family), the tiny-model registry and checkpoint loading."""

from __future__ import annotations

from luvc.models import compat  # noqa: F401  first: it refuses an unsupported transformers before any family loads

# isort: split
import json
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from luvc.compress.config import LUVCConfig
from luvc.errors import critical
from luvc.models.base import VLMAdapter, check_fp16_range
from luvc.models.gemma3 import Gemma3Adapter
from luvc.models.internvl import InternVLAdapter
from luvc.models.llava import LlavaAdapter
from luvc.models.qwen2_5_vl import Qwen2_5_VLAdapter
from luvc.models.qwen2_vl import Qwen2VLAdapter
from luvc.models.qwen3_5 import Qwen3_5Adapter
from luvc.models.qwen3_vl import Qwen3VLAdapter
from luvc.models.tiny import TINY_ARCHITECTURES, TINY_BUILDERS, build_tiny
from luvc.models.weights import cast_in_place, checkpoint_dtype
from luvc.processing import load_image_processor
from luvc.prompt import chat_template_of

ADAPTERS: dict[str, type[VLMAdapter]] = {
    adapter.architecture: adapter
    for adapter in (
        Qwen2VLAdapter,
        Qwen2_5_VLAdapter,
        Qwen3VLAdapter,
        Qwen3_5Adapter,
        InternVLAdapter,
        LlavaAdapter,
        Gemma3Adapter,
    )
}
TINY_MODELS = tuple(TINY_BUILDERS)
# the tiny models whose family exports (a family that runs in PyTorch only sets ``VLMAdapter.export_refusal``)
EXPORTED_TINY_MODELS = tuple(name for name in TINY_MODELS if not ADAPTERS[TINY_ARCHITECTURES[name]].export_refusal)


def adapter_class(architecture: str | None) -> type[VLMAdapter]:
    """The adapter registered for ``architecture`` (``config.architectures[0]``)."""
    if architecture not in ADAPTERS:
        critical(f"Architecture {architecture!r} is not a supported VLM family; supported: {sorted(ADAPTERS)}.")
    return ADAPTERS[architecture]


def _architecture_of(model: PreTrainedModel) -> str | None:
    for cls in type(model).__mro__:
        if cls.__name__ in ADAPTERS:
            return cls.__name__
    return (getattr(model.config, "architectures", None) or [None])[0]


def apply_luvc(model: PreTrainedModel, config: LUVCConfig | None = None) -> nn.Module:
    """Patch a ``transformers`` VLM in place for LUVC ``config`` (``None``: the defaults) and return it."""
    adapter = adapter_class(_architecture_of(model))(model, tokenizer=None, image_processor=None)
    return adapter.apply_luvc(config)


def load_model(name_or_path: str | Path, dtype: torch.dtype | None = None, seed: int | None = None) -> VLMAdapter:
    """A built-in tiny model by name, or a local checkpoint folder (config.json, safetensors, tokenizer and
    preprocessor files). Nothing is downloaded."""
    name = str(name_or_path)
    if name in TINY_BUILDERS:
        model, tokenizer, processor = build_tiny(name, seed=0 if seed is None else seed)
        model = cast_in_place(model, dtype or torch.float32)
        return ADAPTERS[type(model).__name__](model, tokenizer, processor, name=name)
    path = Path(name_or_path)
    if not path.is_dir():
        critical(f"{name!r} is neither a built-in model {list(TINY_MODELS)} nor a folder; pass a checkpoint folder.")
    config_file = path / "config.json"
    if not config_file.is_file():
        critical(f"{path} has no config.json; point --model at a Hugging Face checkpoint folder.")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        critical(f"{config_file} is not valid JSON ({error}); copy config.json from the original checkpoint.")
    if not isinstance(config, dict):
        critical(f"{config_file} does not hold a JSON object; copy config.json from the original checkpoint.")
    architecture = (config.get("architectures") or [None])[0]
    adapter_cls = adapter_class(architecture)
    from safetensors import SafetensorError
    from transformers import AutoModelForImageTextToText, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # callers show their own progress; errors stay one line

    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        critical(f"{path} has no weight files (*.safetensors); copy the checkpoint's weights into the folder.")
    dtype = dtype or torch.float32
    stored = checkpoint_dtype(config)
    try:  # in the file's dtype the weights stay memory-mapped; cast_in_place then converts without a second copy
        model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=stored or dtype)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as error:  # e.g. a truncated file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        critical(
            f"Cannot load the weights of {path} ({first_line}); a weight file is truncated or does not match "
            "config.json: copy the checkpoint's *.safetensors files again."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        processor = load_image_processor(path)
    except (OSError, ValueError) as error:
        critical(f"{path} lacks tokenizer or preprocessor files ({error}); copy them from the original checkpoint.")
    cast_in_place(model, dtype)
    if model.dtype == torch.float16:
        check_fp16_range(model, f"the checkpoint's {str(stored).removeprefix('torch.') if stored else 'dtype'}")
    # a processor's chat_template.jinja / .json before the tokenizer's: prompts use it (luvc.prompt)
    tokenizer.chat_template = chat_template_of(tokenizer, path)
    return adapter_cls(model, tokenizer, processor, name=str(path))


__all__ = ["ADAPTERS", "EXPORTED_TINY_MODELS", "TINY_MODELS", "VLMAdapter", "adapter_class", "apply_luvc", "load_model"]
