"""LUVC paths against the stock transformers models, for every tiny family."""

import pytest
import torch

from luvc import LUVCConfig
from luvc.errors import LuvcError
from tests.conftest import stock_inputs

PROMPT = "Describe the image."


@torch.no_grad()
def test_luvc_off_matches_stock_logits(adapter, stock, image):
    adapter.apply_luvc(LUVCConfig.off())
    inputs = adapter.prepare_inputs([image], PROMPT)
    expected = stock(**stock_inputs(adapter, inputs)).logits
    assert torch.equal(adapter.model(**inputs).logits, expected)


@torch.no_grad()
def test_spu_with_full_budgets_matches_stock_logits(adapter, stock, image):
    adapter.apply_luvc(LUVCConfig.off())
    inputs = adapter.prepare_inputs([image], PROMPT)
    visual = adapter.plan(inputs).budget_plan.num_visual_tokens
    adapter.apply_luvc(LUVCConfig(oim_layers=(), budgets=(visual,), final_zero=False))
    assert adapter.plan(inputs).budget_plan.total == (visual,) * adapter.num_layers
    expected = stock(**stock_inputs(adapter, inputs)).logits
    assert torch.equal(adapter.model(**inputs).logits, expected)


@torch.no_grad()
@torch.no_grad()
def test_default_luvc_changes_logits_but_keeps_state_dict_keys(adapter, stock, image):
    keys = set(adapter.model.state_dict())
    adapter.apply_luvc(LUVCConfig.off())
    uncompressed = stock(**stock_inputs(adapter, adapter.prepare_inputs([image], PROMPT))).logits[:, -1]
    adapter.apply_luvc()
    assert set(adapter.model.state_dict()) == keys
    inputs = adapter.prepare_inputs([image], PROMPT)
    logits = adapter.model(**inputs).logits[:, -1]  # the next token's logits, after compression
    assert torch.isfinite(logits).all()
    assert (logits - uncompressed).abs().max() > 1e-3 * uncompressed.abs().max()  # compression changed the answer
    assert "luvc_spu=spectral-residual" in repr(adapter.model)


def _count_tokens(modules, sequence_dim: int | None) -> tuple[list[int], list]:
    """Tokens entering each module: along ``sequence_dim``, or (``None``) every row of every image or tile."""

    def count(hidden: torch.Tensor) -> int:
        return hidden.shape[:-1].numel() if sequence_dim is None else hidden.shape[sequence_dim]

    counts, handles = [], []
    for module in modules:
        handles.append(
            module.register_forward_pre_hook(
                lambda _m, args, kwargs: counts.append(count(args[0] if args else kwargs["hidden_states"])),
                with_kwargs=True,
            )
        )
    return counts, handles


@torch.no_grad()
def test_layers_process_exactly_their_budgets(adapter, image):
    adapter.apply_luvc()
    inputs = adapter.prepare_inputs([image], PROMPT)
    plan, report = adapter.plan(inputs).budget_plan, adapter.cost(inputs)
    decoder_counts, handles = _count_tokens(adapter.decoder_layers, sequence_dim=1)
    encoder_counts, more = _count_tokens(adapter.vision_blocks, sequence_dim=None)
    adapter.model(**inputs)
    for handle in handles + more:
        handle.remove()
    text = inputs["input_ids"].shape[1] - plan.num_visual_tokens
    visual = [count - text for count in decoder_counts]
    assert visual == list(plan.total)
    assert visual[-1] == 0 and visual[0] == plan.num_visual_tokens
    assert len(set(visual)) > 2  # a real cascade: full, partial, zero
    assert decoder_counts == list(report.decoder_tokens)
    assert encoder_counts == list(report.encoder_tokens)
    assert encoder_counts[-1] < encoder_counts[0]  # OIM merged inside the encoder


@torch.no_grad()
def test_kept_tokens_carry_their_original_positions(adapter, image):
    adapter.apply_luvc()
    inputs = adapter.prepare_inputs([image], PROMPT)
    plan = adapter.plan(inputs).budget_plan
    layer = next(index for index in plan.prune_layers() if plan.total[index] > 0)
    captured = {}
    hook = adapter.decoder_layers[layer].register_forward_pre_hook(
        lambda _m, _a, kwargs: captured.update(cos=kwargs["position_embeddings"][0]), with_kwargs=True
    )
    outputs = adapter.model.model(**inputs)
    hook.remove()
    kept = outputs.kept_visual_indices[layer][0]
    assert torch.equal(kept, kept.sort().values)
    # The rotary cos of the full sequence, indexed at the kept visual tokens' original positions.
    full_ids = inputs["input_ids"]
    start = int((full_ids[0] == adapter.image_token_id).nonzero()[0])
    capture_full = {}
    hook = adapter.decoder_layers[0].register_forward_pre_hook(
        lambda _m, _a, kwargs: capture_full.update(cos=kwargs["position_embeddings"][0]), with_kwargs=True
    )
    adapter.model.model(**inputs)
    hook.remove()
    expected = capture_full["cos"][0, start + kept]
    assert torch.equal(captured["cos"][0, start : start + len(kept)], expected)
    assert torch.equal(captured["cos"][0, :start], capture_full["cos"][0, :start])  # prefix text unchanged


# pruning from layer 0 too: in the slow tier, to keep the fast tier near its two minutes on a 2-core machine
@pytest.mark.parametrize(
    "config",
    [LUVCConfig(), pytest.param(LUVCConfig(spu_start=0), marks=pytest.mark.slow)],
    ids=["default", "prune-layer-0"],
)
@torch.no_grad()
def test_cached_greedy_equals_full_prefill_every_step(adapter, image, config):
    from luvc.models.generation import greedy_generate

    adapter.apply_luvc(config)
    inputs = adapter.prepare_inputs([image], PROMPT)
    cached, cached_logits = greedy_generate(adapter.model, inputs, 16, return_logits=True)
    uncached, uncached_logits = greedy_generate(adapter.model, inputs, 16, use_cache=False, return_logits=True)
    assert cached.shape == (1, 16)
    assert torch.equal(cached, uncached)
    torch.testing.assert_close(cached_logits, uncached_logits, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_per_layer_cache_lengths(adapter, image):
    from luvc.models.cache import LuvcCache
    from luvc.models.compat import cache_kwargs

    adapter.apply_luvc()
    inputs = adapter.prepare_inputs([image], PROMPT)
    cache = LuvcCache()
    adapter.model(**inputs, **cache_kwargs(cache), use_cache=True)
    plan = adapter.plan(inputs).budget_plan
    text = inputs["input_ids"].shape[1] - plan.num_visual_tokens
    # a linear-attention layer (Qwen3.5) holds no tokens, but a convolution state (its last 4 inputs, 2 x 16 + 32
    # channels) and a float32 recurrent state (8 x 8 per value head, 4 heads): (256 + 256) x 4 bytes in fp32
    linear = [kind == "linear_attention" for kind in getattr(adapter.language_model.config, "layer_types", [])]
    lengths = [0 if linear and linear[layer] else text + k for layer, k in enumerate(plan.total)]
    assert cache.layer_lengths() == lengths
    assert cache.num_positions == inputs["input_ids"].shape[1]
    key_values = sum(2 * n * adapter.language_model.config.num_key_value_heads * adapter.head_dim * 4 for n in lengths)
    assert cache.nbytes() == key_values + sum(linear) * (256 + 256) * 4
    assert cache.nbytes() - sum(linear) * (256 + 256) * 4 == adapter.cost(inputs, kv_bytes_per_element=4).kv_cache_bytes


@torch.no_grad()
def test_batch_of_two_same_size_images_matches_single_runs(adapter, image):
    from luvc.images import synthetic_image

    adapter.apply_luvc()
    images = [image, synthetic_image(seed=7)]
    batched = adapter.model(**adapter.prepare_inputs(images, PROMPT)).logits
    for row, single in enumerate(images):
        alone = adapter.model(**adapter.prepare_inputs([single], PROMPT)).logits[0]
        torch.testing.assert_close(batched[row], alone, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_channel_spectrum_variant_prunes_differently(adapter, image):
    kept = {}
    for variant in ("spectral-residual", "channel-spectrum"):
        adapter.apply_luvc(LUVCConfig(spu_variant=variant, spu_start=0))
        outputs = adapter.model.model(**adapter.prepare_inputs([image], PROMPT))
        kept[variant] = outputs.kept_visual_indices[0]
    assert kept["spectral-residual"].shape == kept["channel-spectrum"].shape
    assert not torch.equal(kept["spectral-residual"], kept["channel-spectrum"])


CRITERIA_UNDER_TEST = (
    "spectral-residual",
    "random",
    "l2-norm",
    "dart",
    "fastv",
    "visionzip",
    "pdrop",
    "v2drop",
    "todre",
)


def _ratio_config(adapter, image, criterion: str, ratio: float = 0.25) -> LUVCConfig:
    """``criterion`` without OIM at the budgets that give the LLM ``ratio`` of the image's visual tokens."""
    from luvc.compress.budgets import ratio_schedule

    adapter.apply_luvc(LUVCConfig.off())
    visual = adapter.plan(adapter.preprocess([image])).budget_plan.num_visual_tokens
    budgets = ratio_schedule(adapter.num_layers, visual, ratio, LUVCConfig().resolve(4, adapter.num_layers))
    return LUVCConfig(oim_layers=(), spu_variant=criterion, budgets=budgets)


@pytest.mark.parametrize("criterion", CRITERIA_UNDER_TEST)
@torch.no_grad()
def test_every_criterion_keeps_exactly_its_budgets_and_every_text_token(adapter, image, criterion):
    config = _ratio_config(adapter, image, criterion)
    adapter.apply_luvc(config)
    inputs = adapter.prepare_inputs([image], PROMPT)
    if adapter.name == "tiny-qwen3.5" and criterion in ("fastv", "pdrop", "todre"):
        # they rank by the attention of the layer before a cut: layers 0-2 of the tiny Qwen3.5 are linear attention
        with pytest.raises(LuvcError, match=r"layer\(s\) \[[0-2](, [0-2])*\] are linear attention"):
            adapter.model.model(**inputs)
        return
    text = int((inputs["input_ids"] != adapter.image_token_id).sum())
    counts, handles = _count_tokens(adapter.decoder_layers, sequence_dim=1)
    outputs = adapter.model.model(**inputs)
    for handle in handles:
        handle.remove()
    assert counts == [text + k for k in config.budgets]  # every text token, exactly the budget of visual ones
    for layer, kept in outputs.kept_visual_indices.items():
        assert kept.shape == (1, config.budgets[layer])
        assert torch.equal(kept, kept.unique(sorted=True)[None])  # distinct, in ascending (causal) order
    assert torch.isfinite(adapter.model.lm_head(outputs.last_hidden_state[:, -1])).all()


def _attention_weights(module, into: list):
    """A forward hook that keeps the attention weights an eager attention module returns."""
    return module.register_forward_hook(lambda _m, _a, output: into.append(output[1]))


@pytest.mark.parametrize("first_cut", [2, 0], ids=["probe-layer-1", "cut-before-layer-0"])
@torch.no_grad()
def test_fastv_keeps_what_the_last_prompt_token_attends_to(image, first_cut):
    """FastV's ranking is the last prompt token's attention (mean over heads) in the layer before the first cut, or
    layer 0's own on the full prompt for a cut before layer 0 (checked against eager attention's weights); every
    later cut keeps the best-ranked survivors."""
    from luvc.models import load_model

    adapter = load_model("tiny-llava")
    adapter.model.set_attn_implementation("eager")
    adapter.apply_luvc(LUVCConfig.off())
    inputs = adapter.prepare_inputs([image], PROMPT)
    visual = inputs["input_ids"][0] == adapter.image_token_id
    n = int(visual.sum())
    budgets = (n, n, n // 4, n // 8) if first_cut == 2 else (n // 2, n // 2, n // 4, n // 8)
    probed = adapter.decoder_layers[max(first_cut - 1, 0)].self_attn
    weights: list = []
    hook = _attention_weights(probed, weights)
    if first_cut == 0:  # layer 0 on the full prompt: the uncompressed model's first layer
        adapter.model.model(**inputs)
    adapter.apply_luvc(LUVCConfig(oim_layers=(), spu_variant="fastv", budgets=budgets, final_zero=False))
    outputs = adapter.model.model(**adapter.prepare_inputs([image], PROMPT))
    hook.remove()
    ranking = weights[0][0, :, -1].mean(dim=0)[visual]
    for layer in outputs.kept_visual_indices:
        expected = ranking.topk(budgets[layer]).indices.sort().values
        assert outputs.kept_visual_indices[layer][0].tolist() == expected.tolist(), layer


def _layer_io(layer, into: dict):
    """A forward hook that keeps a decoder layer's input and output hidden states."""

    def hook(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        into.update(input=hidden.clone(), output=(output[0] if isinstance(output, tuple) else output).clone())

    return layer.register_forward_hook(hook, with_kwargs=True)


@torch.no_grad()
def test_pdrop_measures_attention_again_before_every_cut(image):
    """PDrop: each cut keeps the survivors the last prompt token attends to most in the layer just before it (eager
    attention's weights), not FastV's one ranking; ToDRE's later cuts read the same ranking."""
    from luvc.models import load_model

    adapter = load_model("tiny-llava")
    adapter.model.set_attn_implementation("eager")
    adapter.apply_luvc(LUVCConfig.off())
    inputs = adapter.prepare_inputs([image], PROMPT)
    n = int((inputs["input_ids"][0] == adapter.image_token_id).sum())
    budgets = (n, n // 2, n // 4, 0)  # cuts before layers 1 and 2
    kept = {}
    for criterion in ("pdrop", "fastv", "todre"):
        weights: list = []
        hooks = [_attention_weights(adapter.decoder_layers[layer].self_attn, weights) for layer in (0, 1)]
        adapter.apply_luvc(LUVCConfig(oim_layers=(), spu_variant=criterion, budgets=budgets))
        outputs = adapter.model.model(**adapter.prepare_inputs([image], PROMPT))
        for hook in hooks:
            hook.remove()
        kept[criterion] = {layer: ids[0].tolist() for layer, ids in outputs.kept_visual_indices.items()}
        visual = (adapter.prepare_inputs([image], PROMPT)["input_ids"][0] == adapter.image_token_id).nonzero()[:, 0]
        start = int(visual[0])
        second = weights[1][0, :, -1].mean(dim=0)[start : start + n // 2]  # layer 1's row over the survivors
        expected = torch.tensor(kept[criterion][1])[second.topk(n // 4).indices].sort().values.tolist()
        if criterion != "fastv":
            assert kept[criterion][2] == expected, criterion
        first = weights[0][0, :, -1].mean(dim=0)[start : start + n]
        if criterion != "todre":  # ToDRE's first cut is its diversity stage
            assert kept[criterion][1] == first.topk(n // 2).indices.sort().values.tolist(), criterion
    assert kept["pdrop"][1] == kept["fastv"][1] and kept["pdrop"][2] != kept["fastv"][2]


@pytest.mark.parametrize("reads", ["v2drop", "normed"])
@torch.no_grad()
def test_a_cut_scores_what_its_criterion_reads(image, reads):
    """V2Drop ranks by how far the layer before the cut moved each visual token; SPU with spu_input=normed scores the
    layer's normed input. Both checked against the hidden states around the layer before the cut."""
    from luvc.compress.scorers import l2_norm_scores
    from luvc.compress.spu import select_tokens, spectral_residual_scores
    from luvc.models import load_model

    adapter = load_model("tiny-qwen2-vl")
    adapter.apply_luvc(LUVCConfig.off())
    inputs = adapter.prepare_inputs([image], PROMPT)
    visual = (inputs["input_ids"][0] == adapter.image_token_id).nonzero()[:, 0]
    start, n = int(visual[0]), len(visual)
    knobs = {"spu_variant": "v2drop"} if reads == "v2drop" else {"spu_input": "normed"}
    config = LUVCConfig(oim_layers=(), budgets=(n, n, n // 4, 0), **knobs)
    adapter.apply_luvc(config)
    seen: dict = {}
    hook = _layer_io(adapter.decoder_layers[1], seen)
    outputs = adapter.model.model(**adapter.prepare_inputs([image], PROMPT))
    hook.remove()
    entering = seen["output"][:, start : start + n]
    if reads == "v2drop":
        scores = l2_norm_scores(entering - seen["input"][:, start : start + n])
    else:
        scores = spectral_residual_scores(adapter.decoder_layers[2].input_layernorm(entering), 0.25)
    assert outputs.kept_visual_indices[2][0].tolist() == select_tokens(scores, n // 4)[0].tolist()
    residual = spectral_residual_scores(entering, 0.25)
    assert outputs.kept_visual_indices[2][0].tolist() != select_tokens(residual, n // 4)[0].tolist()


@torch.no_grad()
def test_keeping_the_low_end_keeps_the_complement(image):
    from luvc.models import load_model

    adapter = load_model("tiny-qwen3-vl")
    adapter.apply_luvc(LUVCConfig.off())
    n = adapter.plan(adapter.preprocess([image])).budget_plan.num_visual_tokens
    kept = {}
    for keep, budget in (("high", n // 2), ("low", n - n // 2)):  # the same scores from either end
        adapter.apply_luvc(LUVCConfig(oim_layers=(), budgets=(n, n, budget, 0), spu_keep=keep))
        kept[keep] = adapter.model.model(**adapter.prepare_inputs([image], PROMPT)).kept_visual_indices[2][0].tolist()
    assert sorted(kept["high"] + kept["low"]) == list(range(n))


@pytest.mark.parametrize("family", ["tiny-internvl", "tiny-llava", "tiny-qwen2.5-vl"])
@torch.no_grad()
def test_grid_lowpass_follows_each_family_token_grid(image, family):
    """The grid each family reports covers exactly its visual tokens (InternVL: tiles x the merged tile grid), and
    the grid low-pass keeps other tokens than the raster one at the same budget."""
    from luvc.models import load_model

    adapter = load_model(family)
    kept = {}
    for lowpass in ("raster", "grid"):
        adapter.apply_luvc(LUVCConfig(spu_lowpass=lowpass))
        pixels = adapter.preprocess([image])
        plan = adapter.plan(pixels)
        assert [b * r * c for b, r, c in plan.vision.span_grids] == list(plan.vision.span_tokens)
        outputs = adapter.model.model(**adapter.prepare_inputs([image], PROMPT))
        kept[lowpass] = outputs.kept_visual_indices[2][0].tolist()
    assert len(kept["grid"]) == len(kept["raster"]) and kept["grid"] != kept["raster"]


@torch.no_grad()
def test_random_criterion_is_seeded(image):
    from luvc.models import load_model

    adapter = load_model("tiny-qwen2-vl")

    def kept(seed: int) -> list[int]:
        adapter.apply_luvc(LUVCConfig(oim_layers=(), spu_variant="random", seed=seed))
        return adapter.model.model(**adapter.prepare_inputs([image], PROMPT)).kept_visual_indices[2][0].tolist()

    assert kept(0) == kept(0) != kept(1)


@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-qwen3-vl"])
@pytest.mark.parametrize("knobs", [{"spu_lowpass": "grid"}, {"spu_variant": "v2drop"}, {"spu_variant": "pdrop"}])
@torch.no_grad()
def test_new_options_and_peers_prune_videos(family, knobs):
    """A video's grid has its temporal slices as blocks (Qwen2-VL: one span; Qwen3-VL: one span per slice), and the
    peers prune a video's spans to the budgets like an image's."""
    from luvc.models import load_model
    from luvc.videos import synthetic_video

    adapter = load_model(family)
    video = synthetic_video(4)
    adapter.apply_luvc(LUVCConfig(**knobs))
    plan = adapter.plan(adapter.preprocess([video]))
    grids = plan.vision.span_grids
    assert [b * r * c for b, r, c in grids] == list(plan.vision.span_tokens)
    assert [slices for slices, _, _ in grids] == ([2] if family == "tiny-qwen2-vl" else [1, 1])  # 4 frames: 2 slices
    outputs = adapter.model.model(**adapter.prepare_inputs([video], PROMPT))
    for layer, kept in outputs.kept_visual_indices.items():
        assert kept.shape[1] == plan.budget_plan.total[layer]


def test_grid_lowpass_is_refused_where_the_tokens_form_no_grid(image):
    """LLaVA's 'full' feature strategy puts the CLS token among an image's LLM tokens: no grid, refused at planning."""
    from luvc.errors import LuvcError
    from luvc.models import load_model

    adapter = load_model("tiny-llava")
    adapter.model.config.vision_feature_select_strategy = "full"
    with pytest.raises(LuvcError, match="spu_lowpass=grid needs each image's token grid"):
        adapter.plan(adapter.preprocess([image]), LUVCConfig(spu_lowpass="grid"))
