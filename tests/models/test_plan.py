"""A request's LUVC plan is worked out once per image grid and config, and shared by every stage that needs it."""

import pytest
import torch

import luvc.models.plan as plan_module
import luvc.models.qwen_vision_plan as qwen_vision_plan
from luvc.compress.config import LUVCConfig
from luvc.export.bucket_plan import plan_bucket
from luvc.export.graphs import prefill_spec, vision_spec
from luvc.export.profile import ExportProfile
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.plan import PlanCache
from tests.conftest import FAMILIES

QWEN_FAMILIES = ["tiny-qwen2-vl", "tiny-qwen2.5-vl"]


@pytest.fixture
def encoder_plans(monkeypatch) -> list:
    """Every grid the real Qwen-VL planner is asked to plan."""
    planned = []
    real = qwen_vision_plan.plan_qwen_vision

    def counting(grid_thw, *args, **kwargs):
        planned.append(tuple(map(tuple, grid_thw.tolist())))
        return real(grid_thw, *args, **kwargs)

    monkeypatch.setattr(qwen_vision_plan, "plan_qwen_vision", counting)
    return planned


def test_cache_keeps_the_most_recent_plans():
    cache = PlanCache(size=2)
    made = []

    def make(key):
        return lambda: made.append(key) or [key]

    first = cache.get("a", make("a"))
    assert cache.get("a", make("a")) is first
    cache.get("b", make("b"))
    cache.get("a", make("a"))  # "a" is now the most recent, so "b" goes first
    cache.get("c", make("c"))
    cache.get("a", make("a"))
    cache.get("b", make("b"))
    assert made == ["a", "b", "c", "b"]
    assert cache.misses == 4


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_forwards_and_inputs_share_one_encoder_plan(family, encoder_plans):
    adapter = load_model(family)
    adapter.apply_luvc()
    inputs = adapter.prepare_inputs([synthetic_image(224, 224, 1)], "Describe.")
    with torch.no_grad():
        for _ in range(3):
            adapter.model.model(**inputs)
    assert len(encoder_plans) == 1
    grid = inputs["image_grid_thw"]
    assert adapter.plan(inputs).vision.encoder is adapter.model.model.visual.luvc_plan(grid)
    adapter.cost(inputs)  # adds the uncompressed plan, nothing else
    assert len(encoder_plans) == 2
    other = adapter.prepare_inputs([synthetic_image(280, 336, 1)], "Describe.")
    assert len(encoder_plans) == 3
    assert adapter.plan(other).tokens_per_image != adapter.plan(inputs).tokens_per_image


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_an_export_bucket_plans_its_grid_once_per_config(family, encoder_plans):
    adapter = load_model(family)
    adapter.apply_luvc()
    profile = ExportProfile(image_sizes=((224, 224),)).resolve(adapter)
    bucket = plan_bucket(adapter, (224, 224))
    vision_spec(adapter, bucket, profile)
    prefill_spec(adapter, bucket, profile)
    assert len(encoder_plans) == 2  # the export's config and the uncompressed one (the baseline KV figure)
    assert bucket.plan is adapter.plan(bucket.pixels)


def test_plans_differ_by_config():
    adapter = load_model("tiny-qwen2-vl")
    adapter.apply_luvc()
    pixels = adapter.preprocess_images([synthetic_image(224, 224, 1)])
    compressed, uncompressed = adapter.plan(pixels), adapter.plan(pixels, LUVCConfig.off())
    assert uncompressed.tokens_per_image[0] == 2 * compressed.tokens_per_image[0]  # one W merge halves the units
    assert uncompressed.budget_plan.total[-1] == uncompressed.tokens_per_image[0]
    assert compressed.budget_plan.total[-1] == 0


@pytest.fixture
def budget_plans(monkeypatch) -> list:
    """Every span layout the real budget planner is asked to plan."""
    planned = []
    real = plan_module.plan_budgets

    def counting(num_layers, span_tokens, config):
        planned.append(tuple(span_tokens))
        return real(num_layers, span_tokens, config)

    monkeypatch.setattr(plan_module, "plan_budgets", counting)
    return planned


@pytest.mark.parametrize("family", FAMILIES)
def test_the_forward_runs_the_request_plans_budgets(family, budget_plans):
    adapter = load_model(family)
    adapter.apply_luvc()
    received = []
    adapter.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: received.append(kwargs["visual"].budgets), with_kwargs=True
    )
    inputs = adapter.prepare_inputs([synthetic_image(224, 224, 1)], "Describe.")
    with torch.no_grad():
        for _ in range(2):
            adapter.model.model(**inputs)
    request = adapter.plan(inputs)
    assert received == [request.budget_plan] * 2 and received[0] is request.budget_plan
    assert budget_plans == [request.vision.span_tokens]  # planned once, by prepare_inputs
