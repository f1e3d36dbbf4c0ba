"""Qwen3-VL under LUVC: DeepStack features go through the OIM steps after their block, and the planes reach the
first decoder layers at the visual tokens SPU kept (checked against the kept indices applied by hand)."""

import pytest
import torch

from luvc.compress.config import LUVCConfig
from luvc.compress.oim import merge_units
from luvc.images import synthetic_image
from luvc.models import load_model

PROMPT = "Describe the picture."


@pytest.fixture
def qwen3():
    return load_model("tiny-qwen3-vl")


def test_deepstack_feature_taken_before_a_merge_gets_that_merge(qwen3):
    qwen3.apply_luvc()
    visual = qwen3.model.model.visual
    assert list(visual.deepstack_visual_indexes) == [0, 1] and qwen3.luvc_config.oim_layers == (0,)
    inputs = qwen3.prepare_inputs([synthetic_image(224, 224, 2)], PROMPT)
    after_block = {}
    hook = visual.blocks[0].register_forward_hook(lambda module, args, output: after_block.setdefault(0, output))
    with torch.no_grad():
        features = qwen3.model.model.luvc_image_features(inputs["pixel_values"], inputs, 1)
        hook.remove()
        plan = visual.luvc_plan(inputs["image_grid_thw"])
        by_hand = merge_units(visual.deepstack_merger_list[0](after_block[0]), plan.merges[0])
    assert torch.equal(features.deepstack[0], by_hand)
    assert features.deepstack[0].shape == features.deepstack[1].shape == features.embeds.shape


def test_planes_reach_the_first_layers_at_the_kept_tokens(qwen3):
    inputs = qwen3.prepare_inputs([synthetic_image(224, 224, 4)], PROMPT, LUVCConfig(budgets=(28, 14, 14, 0)))
    qwen3.apply_luvc(LUVCConfig(budgets=(28, 14, 14, 0)))
    model = qwen3.model.model
    layers = model.language_model.layers
    outputs, inputs_of = {}, {}
    hooks = [layers[i].register_forward_hook(lambda m, a, out, i=i: outputs.setdefault(i, out)) for i in (0, 1)]
    hooks += [layers[i].register_forward_pre_hook(lambda m, a, i=i: inputs_of.setdefault(i, a[0])) for i in (1, 2)]
    with torch.no_grad():
        result = model(**inputs)
        features = model.luvc_image_features(inputs["pixel_values"], inputs, 1)
    for hook in hooks:
        hook.remove()
    start = inputs["input_ids"][0].tolist().index(qwen3.image_token_id)
    planes = [plane[None] for plane in features.deepstack]  # (1, N, D): one image, one row
    assert planes[0].shape[1] == 28
    # layer 0 keeps every token: its plane lands on all of them; SPU then prunes before layer 1
    kept = result.kept_visual_indices[1]
    assert kept.shape == (1, 14)
    by_hand = outputs[0].clone()
    by_hand[:, start : start + 28] += planes[0]
    spu_input = by_hand  # what SPU scored: check the tokens it handed layer 1 are those rows
    rows = torch.cat([spu_input[:, :start], spu_input[:, start + kept[0]], spu_input[:, start + 28 :]], dim=1)
    assert torch.equal(inputs_of[1], rows)
    # layer 1 holds 14 visual tokens: plane 1 is gathered with the kept indices
    by_hand = outputs[1].clone()
    by_hand[:, start : start + 14] += planes[1][:, kept[0]]
    assert torch.equal(inputs_of[2], by_hand)
    # a plane row of a pruned token never reaches the sequence: adding all of them would differ
    assert not torch.equal(planes[1][:, kept[0]], planes[1][:, :14])
