"""Greedy generation for LUVC-patched models, with per-layer KV caches or (as a reference) without a cache."""

from __future__ import annotations

import torch
from torch import nn

from luvc.models.cache import LuvcCache


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    inputs: dict,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    use_cache: bool = True,
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``(B, max_new_tokens)`` greedy tokens after the prompt in ``inputs`` (rows that emit ``eos_token_id``
    repeat it), and with ``return_logits`` the ``(B, steps, vocab)`` logits of each step. With
    ``use_cache=False`` every step re-runs the whole compressed prefill: the slow reference that the cached path
    must equal."""
    prompt = inputs["input_ids"]
    generated = torch.empty(prompt.shape[0], 0, dtype=prompt.dtype, device=prompt.device)
    finished = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    cache = LuvcCache() if use_cache else None
    step_inputs, step_logits = dict(inputs), []
    for _ in range(max_new_tokens):
        if use_cache and generated.shape[1] > 0:
            step_inputs = {"input_ids": generated[:, -1:]}
        elif not use_cache:
            step_inputs = dict(inputs, input_ids=torch.cat([prompt, generated], dim=1))
            step_inputs["attention_mask"] = torch.ones_like(step_inputs["input_ids"])
        logits = model(**step_inputs, past_key_values=cache, use_cache=use_cache, logits_to_keep=1).logits[:, -1]
        step_logits.append(logits)
        token = logits.argmax(dim=-1)
        if eos_token_id is not None:
            token = torch.where(finished, torch.full_like(token, eos_token_id), token)
            finished |= token == eos_token_id
        generated = torch.cat([generated, token[:, None]], dim=1)
        if eos_token_id is not None and bool(finished.all()):
            break
    return (generated, torch.stack(step_logits, dim=1)) if return_logits else generated
