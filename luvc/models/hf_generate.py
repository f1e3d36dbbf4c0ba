"""``model.generate()`` on a LUVC-patched model: the top-level ``...ForConditionalGeneration`` class gets a LUVC
subclass (ToMe-style, like the modules inside it) whose ``generate`` runs the compressed path."""

from __future__ import annotations

import functools

from transformers import GenerationMixin

from luvc.errors import critical
from luvc.models.cache import LuvcCache, new_cache
from luvc.models.compat import cache_kwargs, take_cache


class LuvcGenerationMixin(GenerationMixin):
    """Modifications (the ``...ForConditionalGeneration`` class):

    - ``generate`` starts every call from a fresh ``LuvcCache`` (per-layer lengths, decode positions continued from
      the original prompt length); another cache, or a cache that already holds tokens, is refused;
    - images reach the forward as pixels in the first step, so they go through OIM there: transformers' step that
      pre-encodes them with the uncompressed grid (``mm_encoder_outputs``) is turned off;
    - position ids are left to the LUVC forward (M-RoPE from the merged grid, then positions continued from the
      original prompt length): generate's own come from the uncompressed grid and the cache length;
    - options that need what LUVC removed or a layout it does not support are refused with the reason: beam search
      and several sequences per prompt (rows would share a cache layout they cannot), assisted decoding.
    """

    def _supports_mm_encoder_outputs(self) -> bool:
        return False

    def prepare_inputs_for_generation(self, *args, **kwargs) -> dict:
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        inputs.pop("position_ids", None)
        return inputs

    def generate(self, *args, past_key_values=None, **kwargs):
        past_key_values = take_cache(past_key_values, kwargs)
        if past_key_values is None:
            past_key_values = new_cache(self.config.text_config)
        elif not isinstance(past_key_values, LuvcCache) or past_key_values.get_seq_length() > 0:
            critical(
                "generate() on a LUVC model needs an empty LuvcCache (each layer caches a different number of tokens); "
                "leave the cache out."
            )
        config = kwargs.get("generation_config") or self.generation_config
        for option, limit in (("num_beams", 1), ("num_return_sequences", 1)):
            value = kwargs.get(option, getattr(config, option, 1)) or 1
            if value > limit:
                critical(
                    f"generate(..., {option}={value}) is not supported on a LUVC model: every row of a LUVC batch "
                    "must share one prompt layout and cache. Use greedy decoding or sampling with one sequence per "
                    "prompt (batch the prompts instead)."
                )
        if kwargs.get("assistant_model") is not None or kwargs.get("prompt_lookup_num_tokens"):
            critical("Assisted decoding is not supported on a LUVC model; leave assistant_model and prompt lookup out.")
        return super().generate(*args, **cache_kwargs(past_key_values), **kwargs)


@functools.cache
def luvc_generation_class(cls: type) -> type:
    """The LUVC subclass of a ``...ForConditionalGeneration`` class (itself when it already is one). It keeps the
    class's ``__name__``, which ``save_pretrained`` writes as the architecture, so a saved patched model loads as
    its family (``__qualname__`` says LUVC)."""
    if issubclass(cls, LuvcGenerationMixin):
        return cls
    patched = type(cls.__name__, (LuvcGenerationMixin, cls), {"__doc__": LuvcGenerationMixin.__doc__})
    patched.__qualname__ = f"Luvc{cls.__name__}"
    return patched
