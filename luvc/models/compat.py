"""What differs between the ``transformers`` releases the PyTorch path supports, in one module.

The LUVC forwards replace upstream ones and call upstream modules, so they meet names that releases change. Each such
name is worked out here once, from what the installed release has (not from its version number), and the adapters use
the results:

- the KV cache's keyword and output field: ``past_key_values`` up to 5.23, ``cache`` from 5.24 (``CACHE_NAME``;
  ``cache_kwargs``, ``take_cache``, ``output_cache``);
- what upstream's ``...ForConditionalGeneration.forward`` reads from the multimodal model's output besides the cache:
  ``rope_deltas`` (Qwen-VL, 5.17-5.22), ``image_outputs`` and ``video_outputs`` (5.24). ``LuvcDecoderOutput``
  declares them and leaves them ``None``: the LUVC path keeps its own state in ``LuvcCache``;
- the Qwen-VL encoders' rotary embedding: ``(cos, sin)`` from ``rotary(hidden, ids)`` from 5.17, frequencies from
  ``rotary(ids)`` before (``vision_position_embeddings``).

The supported range is the ``transformers`` requirement of the ``export`` extra in pyproject (read from the installed
package's metadata); ``check_transformers`` refuses another release with one line before any family module loads.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable

import torch
import transformers
from packaging.version import Version

from luvc.errors import critical


def supported_range() -> str | None:
    """The ``transformers`` releases the PyTorch path supports (``">=5.15,<5.25"``), as the ``export`` extra declares
    them; ``None`` when luvc-export is not installed (a source tree on ``sys.path``)."""
    from luvc.requirements import declared_specifier

    specifier = declared_specifier("transformers", "export")
    return None if specifier is None else str(specifier)


def check_transformers(found: str | None = None, supported: str | None = None) -> None:
    """Stop with one line when the imported ``transformers`` (``found``; default: its ``__version__``) is outside the
    supported range (default: ``supported_range()``)."""
    from packaging.specifiers import SpecifierSet

    found = found or transformers.__version__
    supported = supported or supported_range()
    if supported is None or SpecifierSet(supported).contains(Version(found), prereleases=True):
        return
    critical(
        f"The LUVC PyTorch path supports transformers{supported}, found {found}; run "
        f"`{sys.executable} -m pip install 'transformers{supported}'`."
    )


def _cache_name() -> str:
    from transformers.modeling_outputs import BaseModelOutputWithPast

    fields = {field.name for field in dataclasses.fields(BaseModelOutputWithPast)}
    return "cache" if "cache" in fields else "past_key_values"


CACHE_NAME = _cache_name()


def cache_kwargs(cache) -> dict:
    """The keyword argument that hands ``cache`` to an upstream forward (a decoder layer, a model)."""
    return {CACHE_NAME: cache}


def take_cache(past_key_values, kwargs: dict):
    """The cache a LUVC forward was given, under either name: ``past_key_values``, or ``cache`` (popped from
    ``kwargs``, where an upstream forward of 5.24 on passes it)."""
    cache = kwargs.pop("cache", None)
    if past_key_values is not None and cache is not None:
        raise ValueError("Pass the cache once: as `cache` or as `past_key_values`, not both.")
    return cache if past_key_values is None else past_key_values


def output_cache(outputs):
    """The cache an upstream output holds."""
    return getattr(outputs, CACHE_NAME)


@functools.cache
def _rotary_takes_hidden(forward: Callable) -> bool:
    return len(inspect.signature(forward).parameters) >= 3  # (self, x, position_ids)


def vision_position_embeddings(
    rotary: torch.nn.Module, hidden: torch.Tensor, ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of a Qwen-VL encoder's rotary embedding at the ``(N, 2)`` position ``ids``, as the installed
    release's own encoder forward makes them."""
    if _rotary_takes_hidden(type(rotary).forward):
        return rotary(hidden, ids)
    frequencies = rotary(ids)
    angles = torch.cat((frequencies, frequencies), dim=-1)
    return angles.cos(), angles.sin()


check_transformers()
