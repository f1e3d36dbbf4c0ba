"""Token-reduction methods: each method's config, and equal budgets giving equal decoder cost across methods."""

import pytest
import torch

from luvc.compress.budgets import ratio_schedule
from luvc.compress.config import LUVCConfig
from luvc.compress.methods import METHODS, method, method_of
from luvc.errors import LuvcError


def test_each_method_config():
    base = LUVCConfig(oim_layers=(1,), spu_variant="channel-spectrum", rho=0.5)
    budgets = (8, 8, 4, 0)
    assert METHODS["none"].config(base, budgets).is_off
    luvc = METHODS["luvc"].config(base, budgets)
    assert (luvc.oim_layers, luvc.spu_variant, luvc.budgets, luvc.rho) == ((1,), "channel-spectrum", budgets, 0.5)
    assert METHODS["spu-only"].config(base, budgets).oim_layers == ()
    oim = METHODS["oim-only"].config(base, budgets)
    assert (oim.oim_layers, oim.spu_variant, oim.budgets) == ((1,), "none", None)
    for name in ("random", "fastv", "dart", "l2-norm", "visionzip", "pdrop", "v2drop", "todre"):
        config = METHODS[name].config(base, budgets)
        assert (config.oim_layers, config.spu_variant, config.budgets) == ((), name, budgets)


def test_spu_knobs_stay_with_the_methods_that_prune_with_spu():
    base = LUVCConfig(spu_keep="low", spu_input="normed", spu_lowpass="grid")
    assert METHODS["luvc"].config(base).resolve(4, 4).spu_keep == "low"
    assert METHODS["spu-only"].config(base).resolve(4, 4).spu_lowpass == "grid"
    assert METHODS["v2drop"].config(base).resolve(4, 4).spu_keep == "high"  # a peer ranks its own way
    with pytest.raises(LuvcError, match="change how SPU scores tokens"):
        LUVCConfig(spu_variant="dart", spu_keep="low").resolve(4, 4)
    with pytest.raises(LuvcError, match="spectral-residual low-pass"):
        LUVCConfig(spu_variant="channel-spectrum", spu_lowpass="grid").resolve(4, 4)


def test_method_of_names_every_method_back():
    for name, chosen in METHODS.items():
        assert method_of(chosen.config(LUVCConfig()).resolve(4, 4)) == name
    assert method_of(LUVCConfig(spu_variant="dart").resolve(4, 4)) is None  # OIM with a baseline: no method
    with pytest.raises(LuvcError, match="is not one of"):
        method("tome")


def test_exportable_methods():
    refused = {name for name, chosen in METHODS.items() if chosen.export_refusal}
    assert refused == {"fastv", "visionzip", "pdrop", "todre"}


@torch.no_grad()
def test_equal_budgets_give_equal_decoder_cost_across_methods(adapter, image):
    """Every method that prunes, at one budget point: the same tokens in every decoder layer, so the same layer
    FLOPs and KV bytes; only the criterion's scoring (and LUVC's merging encoder) differ."""
    adapter.apply_luvc(LUVCConfig.off())
    pixels = adapter.preprocess([image])
    visual = adapter.plan(pixels).budget_plan.num_visual_tokens
    base = LUVCConfig().resolve(adapter.vision_depth, adapter.num_layers)
    budgets = ratio_schedule(adapter.num_layers, visual, 0.25, base)
    reports = {}
    for name, chosen in METHODS.items():
        if chosen.follows_budgets:
            adapter.apply_luvc(chosen.config(base, budgets))
            reports[name] = adapter.cost(adapter.prepare_inputs([image], "Describe the image."))
    text = reports["luvc"].text_tokens
    for name, report in reports.items():
        assert report.decoder_tokens == tuple(text + k for k in budgets), name
        assert report.llm_prefill_flops - report.selection_flops == reports["random"].llm_prefill_flops, name
        assert report.kv_cache_bytes == reports["random"].kv_cache_bytes, name
    assert reports["random"].selection_flops == 0 and reports["dart"].selection_flops > 0
    assert reports["luvc"].encoder_flops < reports["spu-only"].encoder_flops == reports["random"].encoder_flops
    assert reports["visionzip"].encoder_flops > reports["random"].encoder_flops  # its attention probabilities
