"""Greedy generation for LUVC-patched models, with per-layer KV caches or (as a reference) without a cache."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn
from transformers import PreTrainedModel

from luvc.models.cache import new_cache
from luvc.models.compat import cache_kwargs


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    inputs: dict,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None = None,
    use_cache: bool = True,
    return_logits: bool = False,
    step_times: list[float] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``(B, max_new_tokens)`` greedy tokens after the prompt in ``inputs`` (rows that emit an ``eos_token_id`` (one
    id or several) repeat the first), and with ``return_logits`` the ``(B, steps, vocab)`` logits of each step. With
    ``use_cache=False`` every step re-runs the whole compressed prefill: the slow reference that the cached path
    must equal. ``step_times`` receives ``time.perf_counter()`` as each step's tokens are chosen."""
    prompt = inputs["input_ids"]
    generated = torch.empty(prompt.shape[0], 0, dtype=prompt.dtype, device=prompt.device)
    finished = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    stops = None if eos_token_id is None else torch.tensor(eos_token_id, device=prompt.device).reshape(-1)
    text_config = cast(PreTrainedModel, model).config.get_text_config(decoder=True)
    cache = new_cache(text_config) if use_cache else None
    step_inputs, step_logits = dict(inputs), []
    for _ in range(max_new_tokens):
        if use_cache and generated.shape[1] > 0:
            step_inputs = {"input_ids": generated[:, -1:]}
        elif not use_cache:
            step_inputs = dict(inputs, input_ids=torch.cat([prompt, generated], dim=1))
            step_inputs["attention_mask"] = torch.ones_like(step_inputs["input_ids"])
        logits = model(**step_inputs, **cache_kwargs(cache), use_cache=use_cache, logits_to_keep=1).logits[:, -1]
        step_logits.append(logits)
        token = logits.argmax(dim=-1)
        if stops is not None:
            token = torch.where(finished, stops[0], token)
            finished |= torch.isin(token, stops)
        generated = torch.cat([generated, token[:, None]], dim=1)
        if step_times is not None:
            step_times.append(time.perf_counter())
        if stops is not None and bool(finished.all()):
            break
    return (generated, torch.stack(step_logits, dim=1)) if return_logits else generated
