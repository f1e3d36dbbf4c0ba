"""The LUVC LLM's prefill compiled (``luvc.models.compiled``): the decoder loop traces whole, without a graph break, for
every family, and the compiled model generates what the eager one does (on the CPU; with CUDA graphs on a GPU:
``tests/runtime/test_replay_gpu.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from luvc.errors import LuvcError
from luvc.images import synthetic_image
from luvc.models import TINY_MODELS, load_model
from luvc.models.compiled import compile_llm, compiles, explain_loop
from luvc.models.generation import greedy_generate
from luvc.parity.text import judge_text
from luvc.parity.tolerances import TOLERANCES

PROMPT = "Describe the image."


@pytest.mark.slow
@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_the_decoder_loop_traces_whole_for_every_family(family):
    """What ``compile_llm`` compiles (``luvc_layers``, after the forward's host checks) at a bucket's shapes: no graph
    break (38 breaks counted in the whole tiny Qwen2-VL forward before; every one a value read back to the host)."""
    adapter = load_model(family)
    adapter.apply_luvc()
    explanation = explain_loop(adapter, adapter.prepare_inputs([synthetic_image(224, 224, 3)], PROMPT))
    assert explanation.graph_break_count == 0, [reason.reason[:200] for reason in explanation.break_reasons]
    assert explanation.graph_count == 1 and explanation.op_count > 50


# The loop is every family's code; what differs (rotary tables, masks, DeepStack planes) comes through the family hooks,
# which the test above traces whole for every family. Inductor's own kernels are run here on the Qwen families: Qwen2-VL
# and Qwen2.5-VL (M-RoPE; in a CI run of 2026-11-27 the second took under 21 s after the first's 69 s: inductor's cache
# holds most of its kernels) and Qwen3-VL (DeepStack planes added inside the loop, 48 s). On a fresh machine inductor
# compiles every kernel anew: LLaVA, InternVL and Gemma 3 took 60, 52 and 123 s of that run, for code the families
# above already run (Qwen3.5: about 40 s for its linear-attention kernels).
COMPILED_FAMILIES = ["tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-qwen3-vl"]


@pytest.mark.slow
@pytest.mark.parametrize("family", COMPILED_FAMILIES)
def test_the_compiled_prefill_generates_what_eager_does(family):
    """Greedy, 16 tokens, on the CPU (inductor): the same tokens, or a first difference at a near tie as parity's
    judge decides, and the first step's logits within fp32's bound. Two prompt lengths: the second compiles the
    sequence length as dynamic, still in one graph."""
    adapter = load_model(family)
    adapter.apply_luvc()
    tolerance = TOLERANCES["fp32"].tensor_relative
    prompts = (PROMPT, "Describe the image, then say what the colours are.")
    requests = [adapter.prepare_inputs([synthetic_image(224, 224, 3)], prompt) for prompt in prompts]
    eager = [greedy_generate(adapter.model, inputs, 16, return_logits=True) for inputs in requests]
    compile_llm(adapter.language_model, cuda_graphs=False)
    for inputs, (eager_tokens, eager_logits) in zip(requests, eager):
        for _ in range(2):  # the plan's first prefill runs eagerly (its constants), the others compiled
            tokens, logits = greedy_generate(adapter.model, inputs, 16, return_logits=True)
            judged = judge_text([(tokens.numpy(), eager_tokens.numpy(), eager_logits.numpy())], tolerance)
            assert judged.non_ties == 0 and judged.judged_exact == 1.0, judged
            first, eager_first = logits[:, 0].numpy(), eager_logits[:, 0].numpy()
            assert np.abs(first - eager_first).max() <= tolerance * np.abs(eager_first).max()
    # the prefills but the plan's first (one plan: the prompts differ in length only); the one-token steps run eager
    assert adapter.language_model.luvc_compiled.calls == 3


def test_compile_llm_needs_a_patched_text_model():
    adapter = load_model("tiny-qwen2-vl")
    with pytest.raises(LuvcError, match="call apply_luvc"):
        compile_llm(adapter.model)


@pytest.mark.parametrize(
    ("choice", "device", "many", "compiled"),
    [
        ("auto", "cuda", True, True),  # eval: many requests pay the compile back
        ("auto", "cuda", False, False),  # a one-shot generate does not
        (None, "cpu", True, False),
        ("on", "cuda", False, True),
        ("off", "cuda", True, False),
    ],
)
def test_the_option_compiles_where_it_pays(choice, device, many, compiled):
    assert compiles(choice, device, many) is compiled


def test_the_option_refuses_on_for_the_cpu():
    with pytest.raises(LuvcError, match="need a CUDA device; it runs on cpu"):
        compiles("on", "cpu", True)
