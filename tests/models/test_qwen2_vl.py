"""Qwen2-VL under LUVC: videos (stock equality, token counts, M-RoPE time), and what the forward refuses."""

import copy

import pytest
import torch

from luvc import LUVCConfig, LuvcError
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.videos import synthetic_video
from tests.conftest import PYTORCH_VIDEO_FAMILIES, VIDEO_BUCKETS

PROMPT = "Describe."


@torch.no_grad()
def test_an_image_and_a_video_in_one_prompt(video_adapter):
    # LUVC off: exactly stock transformers (both encoder runs, both grids in M-RoPE); LUVC on: one SPU span per
    # image and per video (Qwen3-VL, Qwen3.5: per slice) in prompt order, budgets split over them, tokens as the cost
    # model
    stock = copy.deepcopy(video_adapter.model)
    visuals = (synthetic_image(224, 224, 1), clip_of(video_adapter))
    video_adapter.apply_luvc(LUVCConfig.off())
    inputs = video_adapter.prepare_inputs([visuals], PROMPT)
    ids = inputs["input_ids"]
    types = (ids == video_adapter.image_token_id).int() + 2 * (ids == video_adapter.video_token_id).int()
    assert torch.equal(video_adapter.model(**inputs).logits, stock(**inputs, mm_token_type_ids=types).logits)
    assert int(types.nonzero()[0, 1]) < int((types == 2).nonzero()[0, 1])  # the image first
    video_adapter.apply_luvc(LUVCConfig(oim_layers=(0, 1), oim_temporal=True, oim_first_axis="T"))
    inputs = video_adapter.prepare_inputs([visuals], PROMPT)
    plan = video_adapter.plan(inputs)
    image_tokens = int((inputs["input_ids"] == video_adapter.image_token_id).sum())
    assert plan.tokens_per_image == (image_tokens, 24)  # 2 slices of 4 x 3 units after T and W merges
    spans = (12, 12) if video_adapter.name in ("tiny-qwen3-vl", "tiny-qwen3.5") else (24,)  # per slice: timestamps
    assert plan.budget_plan.tokens_per_image == (image_tokens, *spans)
    output = video_adapter.model.model(**inputs)
    assert output.kept_visual_indices[2].shape[1] == plan.budget_plan.total[2]
    report = video_adapter.cost(inputs)
    text = inputs["input_ids"].shape[1] - image_tokens - 24
    assert report.decoder_tokens == tuple(text + total for total in plan.budget_plan.total)


def test_several_images_or_videos_in_one_prompt_are_refused_where_they_cannot_run():
    adapter = load_model("tiny-qwen2-vl")
    adapter.apply_luvc()
    image, clip = synthetic_image(224, 224, 1), synthetic_video(4, 112, 112)
    with pytest.raises(LuvcError, match="runs alone; send one prompt"):
        adapter.prepare_inputs([(image, clip), (image, clip)], [PROMPT, PROMPT])
    with pytest.raises(LuvcError, match="written without placeholders"):
        adapter.prepare_inputs([(image, clip)], "<|image_pad|> and the video?")
    with pytest.raises(LuvcError, match="takes one image per prompt"):
        load_model("tiny-llava").prepare_inputs([(image, image)], PROMPT)
    with pytest.raises(LuvcError, match="holds images or videos, not both"):
        adapter.prepare_inputs([image, clip], [PROMPT, PROMPT])  # a batch of two rows of different kinds


@pytest.mark.parametrize("family", ["tiny-internvl", "tiny-llava"])
def test_families_without_video_say_so(family):
    adapter = load_model(family)
    adapter.apply_luvc()
    with pytest.raises(LuvcError, match="Qwen2-VL, Qwen2.5-VL, Qwen3-VL"):
        adapter.prepare_inputs([synthetic_video(4, 112, 112)], PROMPT)


@pytest.fixture(params=PYTORCH_VIDEO_FAMILIES)
def video_adapter(request):
    return load_model(request.param)


def clip_of(adapter) -> object:
    """The family's test clip: 8 frames, 4 temporal slices of 8 x 12 patches."""
    return synthetic_video(*VIDEO_BUCKETS[adapter.name])


@torch.no_grad()
def test_luvc_off_matches_stock_logits_on_a_video(video_adapter):
    stock = copy.deepcopy(video_adapter.model)
    video_adapter.apply_luvc(LUVCConfig.off())
    inputs = video_adapter.prepare_inputs([clip_of(video_adapter)], PROMPT)
    assert inputs["video_grid_thw"].tolist() == [[4, 8, 12]]
    assert "pixel_values" not in inputs and int((inputs["input_ids"] == video_adapter.video_token_id).sum()) == 96
    types = 2 * (inputs["input_ids"] == video_adapter.video_token_id).int()  # the processor's token types
    expected = stock(**inputs, mm_token_type_ids=types).logits
    assert torch.equal(video_adapter.model(**inputs).logits, expected)


@torch.no_grad()
@pytest.mark.parametrize("temporal", [False, True])
def test_video_tokens_per_block_and_layer_match_the_cost_model(video_adapter, temporal):
    config = LUVCConfig(oim_layers=(0, 1), oim_temporal=temporal, oim_first_axis="T" if temporal else None)
    video_adapter.apply_luvc(config)
    inputs = video_adapter.prepare_inputs([clip_of(video_adapter)], PROMPT)
    plan, report = video_adapter.plan(inputs), video_adapter.cost(inputs)
    counts = {"encoder": [], "decoder": []}
    hooks = [
        module.register_forward_pre_hook(
            lambda _m, args, kwargs, key=key, dim=dim: counts[key].append(
                (args[0] if args else kwargs["hidden_states"]).shape[dim]
            ),
            with_kwargs=True,
        )
        for key, modules, dim in (
            ("encoder", video_adapter.vision_blocks, 0),
            ("decoder", video_adapter.decoder_layers, 1),
        )
        for module in modules
    ]
    video_adapter.model(**inputs)
    for hook in hooks:
        hook.remove()
    # 4 slices of 4 x 6 merge units (4 patches each): W then H halves the units, T then W halves the slices too
    assert counts["encoder"] == list(report.encoder_tokens) and counts["encoder"][:2] == [384, 192]
    assert plan.vision.encoder.output_grid_thw.tolist() == ([[2, 8, 6]] if temporal else [[4, 4, 6]])
    text = inputs["input_ids"].shape[1] - plan.budget_plan.num_visual_tokens
    assert [count - text for count in counts["decoder"]] == list(plan.budget_plan.total)
    assert counts["decoder"] == list(report.decoder_tokens)
    assert plan.budget_plan.total[0] == 24 and plan.budget_plan.total[-1] == 0


@torch.no_grad()
def test_temporal_merges_move_the_time_axis_by_slices():
    # Qwen2.5-VL counts time in seconds: a merged slice spans two, so second_per_grid_ts doubles and the merged
    # slice 1 sits where the original slice 2 sat (the rows for h and w follow the compact merged grid).
    adapter = load_model("tiny-qwen2.5-vl")
    video = synthetic_video(8, 112, 112)
    adapter.apply_luvc(LUVCConfig(oim_layers=(0,), spu_variant="none"))
    inputs = adapter.prepare_inputs([video], PROMPT)
    spatial = adapter.prompt_position_ids(inputs, adapter.plan(inputs))[0, 0]
    adapter.apply_luvc(LUVCConfig(oim_layers=(0,), oim_temporal=True, oim_first_axis="T", spu_variant="none"))
    merged_inputs = adapter.prepare_inputs([video], PROMPT)
    merged = adapter.prompt_position_ids(merged_inputs, adapter.plan(merged_inputs))[0, 0]
    start = int((inputs["input_ids"][0] == adapter.video_token_id).nonzero()[0])
    per_slice = 4 * 2  # units of one slice after the W merge (4 x 4 before)
    times = spatial[start : start + 4 * per_slice : per_slice].tolist()  # slices 0..3 of the W-merged grid
    merged_times = merged[start : start + 2 * 16 : 16].tolist()  # slices 0..1 of the T-merged grid
    assert merged_times == [times[0], times[2]]


@pytest.mark.slow  # exports with torch.onnx
@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-qwen3-vl"])  # without and with a bias
def test_the_exported_patch_embedding_is_one_matmul_with_the_conv3d_sums(family, tmp_path):
    import onnx

    from luvc.models.qwen2_vl import patch_embedding

    embed = load_model(family).model.model.visual.patch_embed
    pixels = torch.randn(6, embed.proj.weight[0].numel(), generator=torch.Generator().manual_seed(0))

    class Embedding(torch.nn.Module):
        def forward(self, values):
            return patch_embedding(embed, values)

    path = tmp_path / "patch.onnx"
    torch.onnx.export(Embedding(), (pixels,), path, dynamo=True, verbose=False)
    ops = [node.op_type for node in onnx.load(path).graph.node]
    assert "Conv" not in ops and ("MatMul" in ops or "Gemm" in ops)
    exported = torch.export.export(Embedding(), (pixels,)).module()(pixels)
    # a matmul sums the products in another order than the convolution: float32 rounding, not a wrong weight
    torch.testing.assert_close(exported, embed(pixels), rtol=1e-5, atol=1e-5)
    assert torch.equal(patch_embedding(embed, pixels), embed(pixels))  # eager: the module itself
