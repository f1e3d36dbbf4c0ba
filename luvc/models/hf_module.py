"""``HFModule``: a transformers module as the adapters read it, by its upstream attribute names.

torch types every attribute of a module as ``Tensor | Module`` (``nn.Module.__getattr__``), which says nothing of a
decoder layer's ``self_attn`` or a text model's ``config``, and transformers' classes differ by family and release in
which of them they have. Code that walks a model's submodules by those names takes them as ``HFModule`` (unchecked);
what it computes from them is typed.
"""

from __future__ import annotations

from typing import Any, TypeAlias

HFModule: TypeAlias = Any
