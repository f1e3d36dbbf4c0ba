"""Loading a checkpoint in another dtype without holding it twice.

``transformers`` memory-maps safetensors files: loaded in the file's own dtype, the parameters are views of the
mapping and cost no memory until read. Loaded in another dtype, every tensor is converted while the whole mapping
stays resident, so a bf16 checkpoint loaded as fp16 peaks at twice its size. ``cast_in_place`` converts one tensor
at a time instead and gives each converted tensor's file pages back to the kernel (``madvise(MADV_DONTNEED)``, only
inside private safetensors file mappings), so the peak is the converted model plus one tensor.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import mmap
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# rotary frequencies stay float32 whatever the model's dtype, as transformers builds them: transformers computes RoPE
# angles in float32 from them, and a float16 ``inv_freq`` is off by up to 5e-4 of itself, so the angle at position p
# is off by up to 5e-4 p radians (cos/sin wrong by 0.024 at position 300, found on InternVL3-1B's fp16 export); the
# buffers' names end so: ``inv_freq``, ``original_inv_freq``, and one per kind of layer (Gemma 3's
# ``sliding_attention_inv_freq``, whose float16 copy failed the keys of its fp16 parity at real widths)
FLOAT32_BUFFER_SUFFIX = "inv_freq"
MADV_DONTNEED = 4


def weights_sha256(model: nn.Module, folder: Path | None = None) -> str:
    """What a model's weights are, as one sha256: its checkpoint ``folder``'s ``*.safetensors`` files as stored (the
    same whatever dtype they were loaded in; ``files_sha256``), or without a folder (or with one that holds none) its
    parameters rounded to float16 (``parameters_sha256``)."""
    digest = files_sha256(folder) if folder is not None else None
    return digest or parameters_sha256(model)


def files_sha256(folder: Path) -> str | None:
    """The sha256 of a checkpoint folder's ``*.safetensors`` files, names and bytes, in name order (``None`` when it
    holds none). File reads and hashing only: safe beside PyTorch work in another thread."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            while block := handle.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


def parameters_sha256(model: nn.Module) -> str:
    """The sha256 of a model's state (names, shapes, values; floating point rounded to float16, so a model built in
    float32 and its float16 copy agree)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        if tensor.is_floating_point():
            tensor = tensor.detach().to("cpu", torch.float16)
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def checkpoint_dtype(config: dict) -> torch.dtype | None:
    """The dtype a checkpoint's weights are stored in, from its ``config.json`` (``None`` when not recorded)."""
    name = config.get("dtype") or config.get("torch_dtype")
    return DTYPES.get(str(name).removeprefix("torch.")) if name else None


def _safetensors_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's private safetensors file mappings (Linux; empty elsewhere). Their pages are
    the file's until written to; nothing writes to weights being converted, so dropping them loses nothing (a later
    read would fault them in from the file again)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[5].endswith(".safetensors") and fields[1].endswith("p"):
            start, end = (int(value, 16) for value in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def _release(tensor: torch.Tensor, mappings: list[tuple[int, int]], libc) -> None:
    """Drop the resident file pages under ``tensor`` when it lies in a safetensors mapping."""
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    for low, high in mappings:
        if low <= start and end <= high:
            first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the tensor only
            last = end // mmap.PAGESIZE * mmap.PAGESIZE
            if last > first:
                libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), MADV_DONTNEED)
            return


@torch.no_grad()
def cast_in_place(model: ModuleT, dtype: torch.dtype) -> ModuleT:
    """Convert ``model``'s floating-point parameters and buffers to ``dtype`` one tensor at a time (tied
    parameters once; rotary frequencies stay float32, see ``FLOAT32_BUFFER_SUFFIX``), releasing file pages of
    memory-mapped sources as it goes. The one way this project changes a model's dtype."""
    mappings = _safetensors_mappings()
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if mappings else None
    seen: set[int] = set()
    for module in model.modules():
        for tensors in (module._parameters, module._buffers):
            for name, tensor in tensors.items():
                if tensor is None or not tensor.is_floating_point() or tensor.dtype == dtype or id(tensor) in seen:
                    continue
                if tensors is module._buffers and name.endswith(FLOAT32_BUFFER_SUFFIX):
                    continue
                seen.add(id(tensor))
                source = tensor.data
                converted = source.to(dtype)
                if isinstance(tensor, nn.Parameter):
                    tensor.data = converted
                else:  # a buffer (the parameters' dict holds parameters only)
                    module._buffers[name] = converted
                if libc is not None:
                    _release(source, mappings, libc)
                del source
    return model
