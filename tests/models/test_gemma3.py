"""Gemma 3 under LUVC: OIM merges inside the SigLIP encoder and the projector pools what is left to the same patch
windows; SPU prunes in a language model of sliding-window and global layers whose image tokens see each other both
ways, and both rules hold after a cut by the tokens' request positions, in prefill and decode."""

import copy

import pytest
import torch

from luvc.compress.config import LUVCConfig
from luvc.errors import LuvcError
from luvc.export.exporter import export_model
from luvc.images import synthetic_image
from luvc.models import EXPORTED_TINY_MODELS, TINY_MODELS, load_model
from luvc.models.generation import greedy_generate

PROMPT = "Describe the picture in a few words."
WINDOW = 20  # shorter than the tiny prompt (about 60 tokens), so that the sliding layers' window binds


@pytest.fixture
def gemma3():
    adapter = load_model("tiny-gemma3")
    assert adapter.language_model.config.layer_types[:2] == ["sliding_attention", "full_attention"]
    return adapter


def narrow_window(model: torch.nn.Module, window: int = WINDOW) -> None:
    """Give ``model``'s language model a sliding window of ``window`` tokens (its config: what masks and caches
    read)."""
    model.config.text_config.sliding_window = window
    for layer in model.model.language_model.layers:
        if layer.self_attn.sliding_window is not None:
            layer.self_attn.sliding_window = window


def images(count: int = 2):
    return [synthetic_image(224, 224, seed) for seed in range(1, count + 1)]


@torch.no_grad()
def test_with_luvc_off_and_a_binding_window_the_model_is_upstreams(gemma3):
    stock = copy.deepcopy(gemma3.model)
    narrow_window(stock)
    narrow_window(gemma3.model)
    gemma3.apply_luvc(LUVCConfig.off())
    inputs = gemma3.prepare_inputs(images(), PROMPT)
    assert inputs["input_ids"].shape[1] > 2 * WINDOW
    # prefill: the same masks (causal, each image both ways, the window) as upstream's from token_type_ids
    assert torch.equal(gemma3.model(**inputs).logits, stock(**inputs).logits)
    ours = gemma3.model.generate(
        **inputs, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    theirs = stock.generate(
        **inputs, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    assert torch.equal(ours.sequences, theirs.sequences)
    # upstream's sliding layers keep the last window of keys, ours all of them under a mask: the same sums, reordered
    torch.testing.assert_close(torch.stack(ours.logits), torch.stack(theirs.logits), atol=1e-5, rtol=1e-5)


def expected_mask(positions: list[int], image_of: list[int], window: int | None) -> torch.Tensor:
    """The mask a layer should take, pair by pair from the tokens' request positions and images (-1: text)."""
    size = len(positions)
    allowed = torch.zeros(size, size, dtype=torch.bool)
    for q in range(size):
        for k in range(size):
            seen = positions[k] <= positions[q] or (image_of[q] >= 0 and image_of[q] == image_of[k])
            allowed[q, k] = seen and (window is None or positions[k] > positions[q] - window)
    return allowed


@torch.no_grad()
def test_after_a_cut_each_image_sees_itself_both_ways_and_the_window_counts_positions(gemma3):
    narrow_window(gemma3.model)
    gemma3.apply_luvc(LUVCConfig(budgets=(16, 16, 6, 0)))  # a cut before layer 2 (sliding): 6 of 16 tokens kept
    inputs = gemma3.prepare_inputs(images(), PROMPT)
    masks = {}
    layers = gemma3.decoder_layers

    def keep_mask(index):
        def hook(module, args, kwargs):
            masks.setdefault(index, kwargs["attention_mask"])

        return hook

    hooks = [layers[index].register_forward_pre_hook(keep_mask(index), with_kwargs=True) for index in (0, 2)]
    result = gemma3.model.model(**inputs)
    for hook in hooks:
        hook.remove()
    ids = inputs["input_ids"][0].tolist()
    start = ids.index(gemma3.image_token_id)
    for row in range(2):
        kept = result.kept_visual_indices[2][row].tolist()
        assert len(kept) == 6 and kept == sorted(kept)
        kept_positions = [start + index for index in kept]
        positions = [p for p in range(len(ids)) if not start <= p < start + 16 or p in kept_positions]
        image_of = [0 if start <= p < start + 16 else -1 for p in positions]
        assert torch.equal(masks[2][row, 0], expected_mask(positions, image_of, WINDOW))
    every = list(range(len(ids)))
    image_of = [0 if start <= p < start + 16 else -1 for p in every]
    assert torch.equal(masks[0][0, 0], expected_mask(every, image_of, WINDOW))  # layer 0: before any cut


@torch.no_grad()
def test_decode_masks_the_window_by_the_positions_the_cache_holds(gemma3):
    """A cached decode (each layer's kept keys, a sliding layer's masked by their positions) gives the tokens and
    logits of running the whole compressed prefill again at every step, with a window that binds."""
    narrow_window(gemma3.model)
    gemma3.apply_luvc(LUVCConfig(budgets=(16, 16, 6, 0)))
    inputs = gemma3.prepare_inputs(images(), PROMPT)
    cached, cached_logits = greedy_generate(gemma3.model, inputs, 6, return_logits=True)
    again, again_logits = greedy_generate(gemma3.model, inputs, 6, use_cache=False, return_logits=True)
    assert torch.equal(cached, again)
    torch.testing.assert_close(cached_logits, again_logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("oim_layers", "encoder_grid", "block_tokens", "llm_tokens"),
    [
        ((), (16, 16), (256, 256, 256), 16),  # upstream: 16 x 16 patches pooled 4 x 4
        ((0,), (16, 8), (256, 128, 128), 16),  # one W step: pooled 4 x 2, the same 4 x 4 patch windows
        ((0, 1), (8, 8), (256, 128, 64), 16),
        ((0, 1, 2), (8, 4), (256, 128, 64), 16),  # the last step after the last block; pooled 2 x 1
    ],
)
def test_oim_merges_inside_the_encoder_and_the_pooling_keeps_the_llm_tokens(
    gemma3, oim_layers, encoder_grid, block_tokens, llm_tokens
):
    config = LUVCConfig(oim_layers=oim_layers)
    resolved = config.resolve(gemma3.vision_depth, gemma3.num_layers)
    assert gemma3.encoder_grid(resolved) == encoder_grid
    inputs = gemma3.prepare_inputs(images(1), PROMPT, config)
    plan = gemma3.plan(inputs, config)
    assert plan.tokens_per_image == (llm_tokens,)
    assert plan.vision.block_segments == tuple((count,) for count in block_tokens)  # tokens entering each block
    gemma3.apply_luvc(config)
    with torch.no_grad():
        features = gemma3.model.model(**inputs).image_hidden_states
    assert features.shape == (llm_tokens, gemma3.model.config.text_config.hidden_size)
    speedup = gemma3.cost(inputs, config).encoder_speedup  # the encoder blocks after a step run on fewer tokens
    assert speedup > 1.0 if oim_layers else speedup == 1.0


def test_an_axis_merged_below_the_pooled_grid_hands_the_llm_fewer_tokens(gemma3):
    gemma3.image_processor.size = {"height": 224, "width": 224}
    model = gemma3.model
    model.config.mm_tokens_per_image = 64  # 8 x 8 LLM tokens: pooled 2 x 2 from 16 x 16 patches
    model.model.multi_modal_projector.tokens_per_side = 8
    config = LUVCConfig(oim_layers=(0, 1, 2))  # W, H, W: 8 x 4 patches, below 8 tokens on the W axis
    gemma3.apply_luvc(config)
    inputs = gemma3.prepare_inputs(images(1), PROMPT)
    assert gemma3.plan(inputs).tokens_per_image == (8 * 4,)  # pooled 1 x 1
    with torch.no_grad():
        assert gemma3.model.model(**inputs).image_hidden_states.shape[0] == 32


def upstream_processor(adapter, folder):
    """Upstream's ``Gemma3Processor`` over ``adapter``'s image processor and its tokenizer with Gemma 3's named image
    tokens (saved to ``folder`` and read back): what writes the reference prompts."""
    from transformers import AutoTokenizer, Gemma3Processor

    adapter.tokenizer.save_pretrained(folder)
    named = dict(boi_token="<start_of_image>", eoi_token="<end_of_image>", image_token="<image_soft_token>")
    tokenizer = AutoTokenizer.from_pretrained(folder, extra_special_tokens=named)
    tokens = adapter.model.config.mm_tokens_per_image
    return Gemma3Processor(adapter.image_processor, tokenizer, image_seq_length=tokens)


def chat(images: int) -> str:
    """The tiny model's prompt around ``images`` image placeholders, as the processor takes it."""
    return f"<start_of_turn>user\n{'<start_of_image>' * images}{PROMPT}<end_of_turn>\n<start_of_turn>model\n"


@torch.no_grad()
def test_several_images_in_one_prompt_are_the_processors_and_each_is_a_span_of_its_own(gemma3, tmp_path):
    tokens = gemma3.model.config.mm_tokens_per_image
    theirs = upstream_processor(gemma3, tmp_path)(text=[chat(2)], images=[images()], return_tensors="pt")
    stock = copy.deepcopy(gemma3.model)
    gemma3.apply_luvc(LUVCConfig.off())
    ours = gemma3.prepare_inputs([tuple(images())], PROMPT)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    assert torch.equal(gemma3.model(**ours).logits, stock(**theirs).logits)  # each image both ways, not the other
    # LUVC on: one SPU span per image, the budgets split over both, every visual token gone by the last layer
    config = LUVCConfig(oim_layers=(0,))
    gemma3.apply_luvc(config)
    ours = gemma3.prepare_inputs([tuple(images())], PROMPT)
    plan = gemma3.plan(ours)
    assert plan.tokens_per_image == (tokens, tokens)  # the pooling keeps an image's LLM tokens
    assert plan.vision.block_segments[1] == (128, 128)  # each image merged on its own in the encoder
    assert plan.budget_plan.tokens_per_image == (tokens, tokens)
    assert plan.budget_plan.per_image == ((16, 16), (16, 16), (8, 8), (0, 0))  # the default budgets, per layer
    kept = gemma3.model.model(**ours).kept_visual_indices  # the layers that cut: the visual tokens each keeps
    assert sorted(kept) == [2, 3] and kept[3].numel() == 0
    first, second = int((kept[2] < tokens).sum()), int((kept[2] >= tokens).sum())
    assert (first, second) == (8, 8)  # half of each image's tokens, each image ranked on its own


@torch.no_grad()
def test_pan_and_scan_takes_each_images_crops_as_upstream_and_prunes_each_view_on_its_own(gemma3, tmp_path):
    wide, square = synthetic_image(400, 1000, 1), synthetic_image(400, 400, 2)  # 3 crops of 334 x 400; none
    theirs = upstream_processor(gemma3, tmp_path)(
        text=[chat(2)], images=[[wide, square]], do_pan_and_scan=True, return_tensors="pt"
    )
    assert theirs["pixel_values"].shape[0] == 5  # the wide image's view and its 3 crops, the square one's view
    stock = copy.deepcopy(gemma3.model)
    gemma3.pan_and_scan = True
    gemma3.apply_luvc(LUVCConfig.off())
    ours = gemma3.prepare_inputs([(wide, square)], PROMPT)
    assert "num_crops" not in ours  # planned with, not a model input
    assert torch.equal(ours["input_ids"], theirs["input_ids"])  # upstream's words around the crops included
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    assert torch.equal(gemma3.model(**ours).logits, stock(**theirs).logits)
    # LUVC on: 5 views, each one SPU span of 16 tokens; the first cut keeps half of each view's
    gemma3.apply_luvc(LUVCConfig())
    pixels = gemma3.preprocess_images([wide, square])
    assert pixels["num_crops"].tolist() == [3, 0]
    plan = gemma3.plan(pixels)
    assert plan.tokens_per_image == (64, 16) and plan.vision.spans_per_image == (4, 1)
    assert plan.vision.span_tokens == (16,) * 5
    ours = gemma3.prepare_inputs([(wide, square)], PROMPT)
    assert int((ours["input_ids"] == gemma3.image_token_id).sum()) == 80
    kept = gemma3.model.model(**ours).kept_visual_indices
    views = torch.bincount(kept[2][0] // 16, minlength=5)
    assert views.tolist() == [8] * 5
    with pytest.raises(LuvcError, match="pan-and-scan crops do not export yet"):
        export_model(gemma3, tmp_path / "export")
    assert not (tmp_path / "export").exists()  # refused before any work


def test_gemma3_is_built_in_and_exports():
    assert "tiny-gemma3" in TINY_MODELS and "tiny-gemma3" in EXPORTED_TINY_MODELS  # its stages: test_gemma3_export


def test_pan_and_scan_crops_are_turned_off_for_pytorch_and_the_export_alike():
    from luvc.models.gemma3 import Gemma3Adapter

    pristine = load_model("tiny-gemma3")
    processor = copy.deepcopy(pristine.image_processor)
    crops = dict(pan_and_scan_min_crop_size=64, pan_and_scan_max_num_crops=4, pan_and_scan_min_ratio_to_activate=1.2)
    for name, value in crops.items():
        setattr(processor, name, value)
    processor.do_pan_and_scan = True
    wide = synthetic_image(224, 896, 1)
    assert processor(images=[wide], return_tensors="pt")["pixel_values"].shape[0] > 1  # a view and its crops
    adapter = Gemma3Adapter(pristine.model, pristine.tokenizer, processor, pristine.name)
    assert adapter.image_processor.do_pan_and_scan is False  # what an export saves, and the runtime then loads
    assert adapter.preprocess_images([wide])["pixel_values"].shape == (1, 3, 224, 224)
