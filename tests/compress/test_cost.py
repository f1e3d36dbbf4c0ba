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
