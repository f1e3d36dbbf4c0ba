"""The LUVC LLM's prefill compiled: ``torch.compile(fullgraph=True)`` of the decoder loop, with CUDA graphs on a GPU.

At batch 1 a GPU waits on the host: PyTorch eager launched the LUVC prefill of a 2B model 0.56x as fast as the
uncompressed one on an H100, for the extra operators of each cut. LUVC's budgets are fixed, and everything the loop
branches on (spans, budgets, kept-index layout, positions) is a Python value fixed before it
(``SpuDecoderMixin.luvc_layers``), so the loop compiles whole, without a graph break, and on CUDA replays as one CUDA
graph per shape (``mode="reduce-overhead"``). Decode steps (one token) stay eager: their cache grows every step.

Compiling costs seconds per shape (about 27 s for the first shape of a tiny model on a 2-core CPU, most of it the
compiler's own start), so ``--cuda-graphs auto`` compiles only where many requests pay it back: ``eval`` on a CUDA
device, not a one-shot ``generate``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from luvc.compress.constants import compiled_constants
from luvc.cuda_graphs import replays
from luvc.errors import critical
from luvc.models.decoder import LuvcDecoderOutput, SpuDecoderMixin

REDUCE_OVERHEAD = "reduce-overhead"  # torch.compile's mode with CUDA graphs (cudagraph trees)


def compiles(choice: str | None, device: torch.device | str, many_requests: bool) -> bool:
    """Whether ``--cuda-graphs`` ``choice`` compiles the PyTorch LLM prefill with CUDA graphs on ``device``: ``on``
    (a CUDA device is required), ``auto`` (the default) on a CUDA device when the caller runs ``many_requests``
    (``eval``; a one-shot ``generate`` would not pay the compile back), ``off``."""
    return replays(choice, torch.device(device).type, pays_back=many_requests)


def compile_llm(text_model: nn.Module, cuda_graphs: bool | None = None) -> None:
    """Compile ``text_model``'s decoder loop (a LUVC-patched text model) for its prefills: ``fullgraph`` (a graph
    break is an error, not a silent slow path), static shapes but the sequence length (one compile per model and batch
    size serves every prompt length), and, with ``cuda_graphs`` (default: on a CUDA device), CUDA graphs."""
    if not isinstance(text_model, SpuDecoderMixin):
        critical("compile_llm takes a LUVC-patched text model: call apply_luvc() first.")
    if cuda_graphs is None:
        cuda_graphs = next(text_model.parameters()).device.type == "cuda"
    mode = REDUCE_OVERHEAD if cuda_graphs else None
    loop = torch.compile(text_model.luvc_layers, fullgraph=True, dynamic=False, mode=mode)
    text_model.luvc_compiled = CompiledLoop(text_model, loop, cuda_graphs)


def uncompile_llm(text_model: SpuDecoderMixin) -> None:
    """Run ``text_model``'s prefills eagerly again."""
    text_model.luvc_compiled = None


# compiles one decoder loop may hold: one per model (the code is every family's) and batch size; past it torch.compile
# would fall back to eager
RECOMPILE_LIMIT = 64


class CompiledLoop:
    """``text_model``'s compiled decoder loop, called as ``luvc_layers``. The first prefill of each plan (batch, width,
    spans, budgets, config) runs eagerly, which makes the plan's constants (``luvc.compress.constants``); later ones
    run compiled, with the sequence length of the inputs marked dynamic (every other size, and every span and budget,
    stays a constant of the graph). With ``cuda_graphs`` the outputs (the hidden states, the kept indices and the keys
    and values put in the cache) live in the CUDA graphs' memory pool until the next replay overwrites them: each call
    starts a new step and hands out copies, so a request may keep its cache while the next one runs."""

    def __init__(self, text_model: SpuDecoderMixin, loop: Callable[..., LuvcDecoderOutput], cuda_graphs: bool) -> None:
        self.text_model, self.loop, self.cuda_graphs = text_model, loop, cuda_graphs
        self.plans: set[tuple] = set()  # the plans an eager run has seen
        self.calls = 0  # prefills run compiled

    def __call__(self, hidden, position_ids, past_key_values, use_cache, **kwargs) -> LuvcDecoderOutput:
        plan = _plan_key(self.text_model, hidden, kwargs)
        if plan not in self.plans:
            self.plans.add(plan)
            return self.text_model.luvc_layers(hidden, position_ids, past_key_values, use_cache, **kwargs)
        self.calls += 1
        torch._dynamo.maybe_mark_dynamic(hidden, 1)
        if position_ids is not None:
            torch._dynamo.maybe_mark_dynamic(position_ids, position_ids.dim() - 1)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT), compiled_constants():
            output = self.loop(hidden, position_ids, past_key_values, use_cache, **kwargs)
        if self.cuda_graphs:
            _own(output, past_key_values)
        return output


def _plan_key(text_model: SpuDecoderMixin, hidden: torch.Tensor, kwargs: dict) -> tuple:
    """What fixes a prefill's constants and graph: batch, width, dtype and device, the LUVC config, and the plan
    (``VisualPlan``: spans, budgets and grids as they are, its tensors by shape and dtype)."""
    plan = tuple(sorted((key, _signature(value)) for key, value in kwargs.items()))
    return (hidden.shape[0], hidden.shape[-1], hidden.dtype, str(hidden.device), text_model.luvc_config, plan)


def _signature(value) -> object:
    """``value`` as a hashable key: a tensor by its shape and dtype, containers and dataclasses part by part."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    if isinstance(value, (tuple, list)):
        return tuple(_signature(item) for item in value)
    if dataclasses.is_dataclass(value):
        return (type(value).__name__, *(_signature(getattr(value, field.name)) for field in dataclasses.fields(value)))
    return value


def _own(output, cache) -> None:
    """Replace the tensors a CUDA-graph replay gave ``output`` and ``cache`` by copies."""
    output.last_hidden_state = output.last_hidden_state.clone()
    output.kept_visual_indices = {layer: ids.clone() for layer, ids in output.kept_visual_indices.items()}
    for layer in getattr(cache, "layers", ()):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                setattr(layer, name, tensor.clone())


def llm_arguments(adapter, inputs: dict) -> tuple[tuple, dict]:
    """The arguments the multimodal forward of ``adapter`` (LUVC applied) gives its text model for a prefill of
    ``inputs`` (``prepare_inputs``): positional and keyword, as the text model's forward takes them."""
    captured: dict = {}
    hook = adapter.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(kwargs, args=args), with_kwargs=True
    )
    try:
        with torch.no_grad():
            adapter.model.model(**inputs)
    finally:
        hook.remove()
    return captured.pop("args"), captured


def explain_loop(adapter, inputs: dict):
    """``torch._dynamo.explain`` of what ``compile_llm`` compiles for a prefill of ``inputs``: the decoder loop (after
    the forward's host checks), traced as ``CompiledLoop`` traces it (after an eager run of the plan)."""
    from luvc.models.cache import new_cache

    _, kwargs = llm_arguments(adapter, inputs)
    hidden, positions = kwargs.pop("inputs_embeds"), kwargs.pop("position_ids")
    plan = {
        key: value for key, value in kwargs.items() if key not in ("attention_mask", "past_key_values", "use_cache")
    }
    loop, text_config = adapter.language_model.luvc_layers, adapter.language_model.config
    with torch.no_grad():
        # the plan's constants, as CompiledLoop's first call
        loop(hidden, positions, new_cache(text_config), True, **plan)
        with compiled_constants():
            return torch._dynamo.explain(loop)(hidden, positions, new_cache(text_config), True, **plan)
