"""Qwen3-VL under LUVC: DeepStack features go through the OIM steps after their block, and the planes reach the
first decoder layers at the visual tokens SPU kept (checked against the kept indices applied by hand)."""

import re

import pytest
import torch

from luvc.compress.config import LUVCConfig
from luvc.compress.oim import merge_units
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.videos import synthetic_video

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


def test_a_video_gets_one_timestamped_block_and_one_spu_span_per_slice():
    # Qwen3-VL's processor writes "<t seconds><|vision_start|>...<|vision_end|>" per temporal patch, the time the
    # mean of the patch's first and last frame; after a T merge a slice covers two patches (four frames)
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    adapter = load_model("tiny-qwen3-vl")
    clip = synthetic_video(8, 128, 192, fps=4.0)
    adapter.apply_luvc(LUVCConfig(oim_layers=(), spu_variant="none"))
    text = adapter.tokenizer.decode(adapter.prepare_inputs([clip], "Hi")["input_ids"][0])
    upstream = Qwen3VLProcessor._calculate_timestamps(None, list(clip.frame_indices), clip.fps, 2)
    assert upstream == [0.125, 0.625, 1.125, 1.625]
    blocks = re.findall(r"<([\d.]+) seconds><\|vision_start\|>((?:<\|video_pad\|>)+)<\|vision_end\|>", text)
    assert [(seconds, len(pads) // len("<|video_pad|>")) for seconds, pads in blocks] == [
        (f"{moment:.1f}", 24) for moment in upstream
    ]
    adapter.apply_luvc(LUVCConfig(oim_layers=(0,), oim_temporal=True, oim_first_axis="T", budgets=(48, 48, 20, 0)))
    inputs = adapter.prepare_inputs([clip], "Hi")
    text = adapter.tokenizer.decode(inputs["input_ids"][0])
    assert re.findall(r"<([\d.]+) seconds>", text) == ["0.4", "1.4"]  # (0 + 0.75) / 2, (1 + 1.75) / 2
    plan = adapter.plan(inputs).budget_plan
    assert plan.tokens_per_image == (24, 24) and plan.per_image[2] == (10, 10)  # each slice pruned as a span
    output = adapter.model.model(**inputs)
    assert output.kept_visual_indices[2].shape == (1, 20)
