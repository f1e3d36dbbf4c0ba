"""Attention probabilities of one attention module, for the criteria that rank tokens by attention (FastV, VisionZip).

Fused attention (SDPA, FlashAttention, TensorRT's attention layers) never materialises the probabilities; that is
why LUVC's SPU does without them, and why the criteria that need them cost an extra computation and cannot be
exported. The probe is an attention function registered with ``transformers``' ``AttentionInterface``: it computes
the probabilities of the rows it is asked for from the module's own query and key (after the module's projections,
norms and rotary embedding), in float32, keeps their mean over heads, and returns the output of the implementation
the module was configured with, so the forward is unchanged. ``attention_probe`` switches it on for one module, by
giving that module a copy of its config that names the probe, for the duration of a ``with`` block.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import sys
import weakref
from collections.abc import Iterator
from typing import Literal, Protocol

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PROBE = "luvc_attention_probe"
QUERY_CHUNK = 1024  # query rows whose probabilities are held at once ("received" over long sequences)

Reduction = Literal["last-query", "first-query", "received"]


@dataclasses.dataclass
class AttentionRecord:
    """What a probe measured, one ``(B, keys)`` float32 tensor per attention call (an encoder that attends per image
    segment calls once per segment), each the mean over heads of: the last query row's probabilities
    (``"last-query"``: what the last prompt token attends to), the first row's (``"first-query"``: a CLS token's), or
    the probabilities each key receives, averaged over the queries (``"received"``)."""

    reduction: Reduction
    implementation: str  # the module's own attention implementation, which computes the output
    values: list[torch.Tensor] = dataclasses.field(default_factory=list)

    def concatenated(self) -> torch.Tensor:
        """The calls' values joined along the key axis: ``(B, total keys)``."""
        return torch.cat(self.values, dim=-1)


def _logits(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """Float32 attention logits of ``query (B, H, q, d)`` against ``key (B, H, k, d)`` with ``mask`` (additive or
    boolean, already sliced to these rows) applied."""
    logits = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
    if mask is None:
        return logits
    if mask.dtype == torch.bool:
        return logits.masked_fill(~mask, torch.finfo(torch.float32).min)
    return logits + mask.float()


def measure(record: AttentionRecord, query, key, attention_mask, scaling: float | None) -> torch.Tensor:
    """The ``(B, keys)`` reduction of the probabilities ``query`` and ``key`` give (grouped-query heads repeated)."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1) if groups > 1 else key
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    mask = None if attention_mask is None else attention_mask[..., : key.shape[-2]]
    if record.reduction in ("last-query", "first-query"):
        row = slice(-1, None) if record.reduction == "last-query" else slice(0, 1)
        rows = None if mask is None else mask[..., row, :]
        return _logits(query[:, :, row], key, rows, scaling).softmax(-1)[:, :, 0].mean(dim=1)
    received = torch.zeros(query.shape[0], key.shape[-2], dtype=torch.float32, device=query.device)
    for start in range(0, query.shape[-2], QUERY_CHUNK):
        rows = slice(start, start + QUERY_CHUNK)
        chunk_mask = None if mask is None else mask[..., rows, :]
        received += _logits(query[:, :, rows], key, chunk_mask, scaling).softmax(-1).sum(dim=2).mean(dim=1)
    return received / query.shape[-2]


def _own_implementation(module: nn.Module, name: str):
    """The attention function ``name`` of ``module``; for ``eager``, the eager function of the module's own modeling
    file (transformers defines one per family), else SDPA's."""
    if name == "eager":
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        return eager or sdpa_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(name, sdpa_attention_forward)


def probe_attention(module: nn.Module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The probe's attention function: record the probabilities, return the module's own implementation's output."""
    record = _RECORDS[module]
    with torch.no_grad():
        record.values.append(measure(record, query, key, attention_mask, scaling))
    own = _own_implementation(module, record.implementation)
    return own(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


AttentionInterface.register(PROBE, probe_attention)
# the record of each attention module being probed (``attention_probe``), by module
_RECORDS: weakref.WeakKeyDictionary[object, AttentionRecord] = weakref.WeakKeyDictionary()


class ConfiguredModule(Protocol):
    """A module of ``transformers`` that reads its config (an attention module)."""

    config: PreTrainedConfig


@contextlib.contextmanager
def attention_probe(module: ConfiguredModule, reduction: Reduction) -> Iterator[AttentionRecord]:
    """Within the block, ``module`` (an attention module of ``transformers``) records ``reduction`` of its attention
    probabilities on every call; yields the record."""
    config = module.config
    record = AttentionRecord(reduction, config._attn_implementation or "eager")
    probing = copy.copy(config)  # the shared config (and its sub-configs) stay as they are
    probing._attn_implementation_internal = PROBE
    module.config, _RECORDS[module] = probing, record
    try:
        yield record
    finally:
        module.config = config
        del _RECORDS[module]
