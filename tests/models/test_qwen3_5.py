"""Qwen3.5 under LUVC: SPU prunes before a linear-attention layer as before an attention layer (a pruned token leaves
the sequence the layer's convolution and recurrence read), only the attention layers keep keys and values, and the
fixed-size states carry the prompt into decode."""

import pytest
import torch

from luvc.compress.config import LUVCConfig
from luvc.images import synthetic_image
from luvc.models import EXPORTED_TINY_MODELS, TINY_MODELS, load_model
from luvc.models.generation import greedy_generate

PROMPT = "Describe the picture."
BUDGETS = (28, 28, 14, 0)  # 28 visual tokens after OIM; cuts before layer 2 (linear attention) and 3 (attention)


@pytest.fixture
def qwen35():
    adapter = load_model("tiny-qwen3.5")
    assert adapter.language_model.config.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    return adapter


@torch.no_grad()
def test_a_linear_attention_layer_after_a_cut_reads_only_the_kept_tokens(qwen35):
    qwen35.apply_luvc(LUVCConfig(budgets=BUDGETS))
    inputs = qwen35.prepare_inputs([synthetic_image(224, 224, 4)], PROMPT)
    layers = qwen35.decoder_layers
    outputs, inputs_of = {}, {}
    hooks = [layers[1].register_forward_hook(lambda m, a, out: outputs.setdefault(1, out))]
    hooks += [layers[2].register_forward_hook(lambda m, a, out: outputs.setdefault(2, out))]
    hooks += [layers[2].register_forward_pre_hook(lambda m, a: inputs_of.setdefault(2, a[0]))]
    result = qwen35.model.model(**inputs)
    for hook in hooks:
        hook.remove()
    start = inputs["input_ids"][0].tolist().index(qwen35.image_token_id)
    kept = result.kept_visual_indices[2][0]
    assert kept.shape == (14,)
    after = outputs[1]
    rows = torch.cat([after[:, :start], after[:, start + kept], after[:, start + 28 :]], dim=1)
    assert torch.equal(inputs_of[2], rows)  # what SPU handed layer 2: layer 1's rows at the kept tokens
    # layer 2 alone on those rows, no cache: its convolution and recurrence saw nothing else
    alone = layers[2](rows, position_embeddings=None, attention_mask=None)
    torch.testing.assert_close(outputs[2], alone, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_decode_carries_the_states_and_the_attention_layers_keys(qwen35):
    """The cached decode (fixed-size states in layers 0-2, keys and values of the tokens layer 3 processed) gives the
    tokens and logits that re-running the whole compressed prefill at every step gives."""
    qwen35.apply_luvc(LUVCConfig(budgets=BUDGETS))
    inputs = qwen35.prepare_inputs([synthetic_image(224, 224, 4)], PROMPT)
    cached, cached_logits = greedy_generate(qwen35.model, inputs, 6, return_logits=True)
    again, again_logits = greedy_generate(qwen35.model, inputs, 6, use_cache=False, return_logits=True)
    assert torch.equal(cached, again)
    torch.testing.assert_close(cached_logits, again_logits, atol=1e-5, rtol=1e-4)


def test_qwen35_is_built_in_and_exports():
    assert "tiny-qwen3.5" in TINY_MODELS and "tiny-qwen3.5" in EXPORTED_TINY_MODELS  # its stages: test_qwen3_5_export
