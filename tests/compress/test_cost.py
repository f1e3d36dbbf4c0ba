from luvc import LUVCConfig
from luvc.compress.budgets import plan_budgets
from luvc.compress.cost import LlmSpec, VisionSpec, encoder_flops, estimate_cost, llm_prefill_flops

LLM = LlmSpec(hidden=8, layers=2, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10)
VISION = VisionSpec(embed=4, mlp=8, patch_flops_per_token=0, projector_flops_per_unit=0)


def test_llm_prefill_flops_by_hand():
    # per token: q,o = 2 * 8*8; k,v = 2 * 8*4; mlp = 3 * 8*16 -> 128 + 64 + 384 = 576 MACs = 1152 FLOPs
    # attention for 3 tokens: 4 * heads*head_dim * 3*4/2 = 4 * 8 * 6 = 192; LM head: 2 * 8 * 10 = 160
    assert llm_prefill_flops(LLM, [3]) == 1152 * 3 + 192 + 160


def test_encoder_flops_by_hand():
    # one block, two segments of 2 tokens: linear 2 * 4 * (4*16 + 2*4*8) = 1024; attention 4*4*(4+4) = 128
    assert encoder_flops(VISION, [(2, 2)], llm_tokens=4) == 1024 + 128


def test_estimate_cost_counts_text_plus_budget_per_layer():
    config = LUVCConfig(spu_start=0).resolve(2, 2)
    plan, base = plan_budgets(2, [10], config), plan_budgets(2, [10], LUVCConfig.off().resolve(2, 2))
    report = estimate_cost(VISION, LLM, ([(11,)], plan), ([(11,)], base), 5, config)
    assert report.decoder_tokens == (5 + plan.total[0], 5 + plan.total[1])
    assert report.decoder_tokens_baseline == (15, 15)
    assert report.kv_cache_bytes_baseline == 2 * (15 + 15) * 1 * 4 * 2
    assert report.llm_prefill_speedup > 1.0 and report.selection_flops > 0


def test_criteria_scoring_by_hand():
    from luvc.compress.cost import selection_flops

    cut_at_1 = plan_budgets(2, [10], LUVCConfig(budgets=(10, 4), final_zero=False).resolve(2, 2))
    cut_at_0 = plan_budgets(2, [10], LUVCConfig(budgets=(6, 4), final_zero=False).resolve(2, 2))

    def criterion(variant: str, **knobs) -> LUVCConfig:
        return LUVCConfig(spu_variant=variant, spu_start=0, **knobs).resolve(2, 2)

    # the cut before layer 1 scores 10 tokens of width 8
    assert selection_flops(cut_at_1, LLM, criterion("l2-norm")) == 2 * 10 * 8
    assert selection_flops(cut_at_1, LLM, criterion("dart", dart_pivots=3)) == 2 * 10 * 8 * (3 + 2)
    assert selection_flops(cut_at_1, LLM, criterion("random")) == 0
    assert selection_flops(cut_at_1, LLM, criterion("visionzip")) == 0
    # fastv, probing layer 0's forward: one attention row over 5 text + 10 visual tokens, 2 heads of 4
    assert selection_flops(cut_at_1, LLM, criterion("fastv"), text_tokens=5) == 2 * 8 * 15
    # fastv, cut before layer 0: an extra attention pass of layer 0 (q, k, v, o: 192 multiply-adds a token; pairs)
    assert selection_flops(cut_at_0, LLM, criterion("fastv"), text_tokens=5) == 2 * 192 * 15 + 4 * 8 * 15 * 16 // 2
    # SPU's knobs: the raster low-pass keeps ceil(0.25 * 10) = 3 frequencies, the grid projection is 10 x 10, the
    # normed input adds an RMS norm of the 10 tokens
    assert selection_flops(cut_at_1, LLM, criterion("spectral-residual")) == 2 * 2 * 3 * 10 * 8
    assert selection_flops(cut_at_1, LLM, criterion("spectral-residual", spu_lowpass="grid")) == 2 * 2 * 10 * 10 * 8
    normed = criterion("spectral-residual", spu_input="normed")
    assert selection_flops(cut_at_1, LLM, normed) == 2 * 2 * 3 * 10 * 8 + 4 * 10 * 8
    # the peers: v2drop a difference and a norm; pdrop fastv's row before every cut; todre's k-center at its first
    assert selection_flops(cut_at_1, LLM, criterion("v2drop")) == 3 * 10 * 8
    assert selection_flops(cut_at_1, LLM, criterion("pdrop"), text_tokens=5) == 2 * 8 * 15
    assert selection_flops(cut_at_1, LLM, criterion("todre"), text_tokens=5) == 2 * 10 * 10 * 8
    two_cuts = plan_budgets(2, [10], LUVCConfig(budgets=(6, 4), final_zero=False).resolve(2, 2))
    assert selection_flops(two_cuts, LLM, criterion("pdrop"), text_tokens=5) == (
        2 * 192 * 15 + 4 * 8 * 15 * 16 // 2 + 2 * 8 * (5 + 6)
    )


def test_visionzip_pays_for_the_encoder_probabilities():
    from luvc.compress.cost import encoder_ranking_flops

    segments = [(9, 9), (9, 9)]  # two images of 9 tokens, two blocks
    assert encoder_ranking_flops(VISION, segments, "visionzip") == 2 * 4 * (81 + 81)  # every query-key product
    with_cls = VisionSpec(embed=4, mlp=8, patch_flops_per_token=0, projector_flops_per_unit=0, cls_token=True)
    assert encoder_ranking_flops(with_cls, segments, "visionzip") == 2 * 4 * (9 + 9)  # the CLS row only
    assert encoder_ranking_flops(VISION, segments, "fastv") == 0


def test_a_linear_attention_layer_costs_its_weights_and_the_delta_rule():
    """Qwen3.5's Gated DeltaNet layer, counted from the tiny model's own modules: two FLOPs per weight of each
    projection and of the depthwise convolution, and four ``key x value`` products per value head (the state's
    decay, its read by the key, its rank-one update and its read by the query); linear in the tokens."""
    import dataclasses

    from luvc.compress.cost import kv_cache_bytes
    from luvc.models import load_model

    adapter = load_model("tiny-qwen3.5")
    spec = adapter.llm_spec()
    mixer = adapter.decoder_layers[0].linear_attn
    weights = [mixer.in_proj_qkv, mixer.in_proj_z, mixer.in_proj_b, mixer.in_proj_a, mixer.out_proj, mixer.conv1d]
    per_token = 2 * sum(module.weight.numel() for module in weights) + 4 * 2 * mixer.num_v_heads * 8 * 8
    mlp = 2 * sum(weight.numel() for weight in adapter.decoder_layers[0].mlp.parameters())
    assert spec.linear is not None and spec.linear.layers == {0, 1, 2}
    assert spec.layer_flops(0, 10) == (per_token + mlp) * 10
    assert spec.layer_flops(0, 20) == 2 * spec.layer_flops(0, 10)  # no product over token pairs
    attention = adapter.decoder_layers[3].self_attn  # its query projection also makes the output gate
    projections = [attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj]
    assert spec.attention_projection_flops_per_token() == 2 * sum(module.weight.numel() for module in projections)
    # keys and values of the attention layer only
    assert spec.attends(3) and not spec.attends(2)
    plain = dataclasses.replace(spec, linear=None)
    assert kv_cache_bytes(spec, [7, 7, 7, 5], 2) == kv_cache_bytes(plain, [0, 0, 0, 5], 2) == 2 * 5 * 2 * 16 * 2
