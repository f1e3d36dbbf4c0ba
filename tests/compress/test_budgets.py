import pytest

from luvc import LUVCConfig, LuvcError
from luvc.compress.budgets import budget_values, default_schedule, parse_budget, plan_budgets, ratio_schedule


def resolved(**kwargs) -> LUVCConfig:
    return LUVCConfig(**kwargs).resolve(vision_depth=4, num_layers=4)


def test_default_schedule_is_full_then_linear_to_zero():
    # 4 layers, spu_start 2: layer 2 keeps (4-1-2)/(4-2) = half, the last layer none.
    assert default_schedule(4, 64, resolved()) == (64, 64, 32, 0)


def test_default_schedule_every_two_layers():
    config = LUVCConfig(spu_start=1, spu_every=2).resolve(4, 7)
    # prunes at layers 1, 3, 5 and (final zero) 6: floor(60 * (6 - l) / 6)
    assert default_schedule(7, 60, config) == (60, 50, 50, 30, 30, 10, 0)


def test_default_schedule_without_final_zero_ends_above_zero():
    config = resolved(final_zero=False)
    assert default_schedule(4, 60, config) == (60, 60, 40, 20)


def test_explicit_list_is_continued_with_its_last_value():
    assert parse_budget(6, "64,40,0") == (64, 40, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("64,80,0", "must not increase"),
        ("64,-1", "negative"),
        ("64,64,32,16,0", "4 decoder layers"),
        ("64,x", "comma-separated"),
    ],
)
def test_bad_explicit_lists_are_rejected(spec, message):
    with pytest.raises(LuvcError, match=message):
        parse_budget(4, spec)


def test_budget_over_the_visual_token_count_is_rejected():
    with pytest.raises(LuvcError, match="more than the 50 visual tokens"):
        plan_budgets(4, [50], resolved(budgets=(64, 32, 16, 0)))


def test_final_zero_requires_a_zero_last_budget():
    with pytest.raises(LuvcError, match="final_zero"):
        plan_budgets(4, [64], resolved(budgets=(64, 32, 16, 8)))
    assert plan_budgets(4, [64], resolved(budgets=(64, 32, 16, 8), final_zero=False)).total == (64, 32, 16, 8)


def test_split_per_image_is_proportional_and_non_increasing():
    plan = plan_budgets(4, [30, 10], resolved(budgets=(40, 20, 7, 0)))
    assert plan.per_image[1] == (15, 5)
    assert sum(plan.per_image[2]) == 7
    for layer in range(1, 4):
        assert all(now <= before for now, before in zip(plan.per_image[layer], plan.per_image[layer - 1]))
    assert plan.prune_layers() == (1, 2, 3)


def test_spu_none_keeps_everything():
    plan = plan_budgets(4, [64], resolved(spu_variant="none"))
    assert plan.total == (64,) * 4 and plan.prune_layers() == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"oim_layers": (4,)}, "outside the encoder"),
        ({"spu_start": 4}, "does not fit"),
        ({"rho": 1.5}, "rho"),
        ({"spu_variant": "fft"}, "not one of"),
        ({"spu_every": 0}, "spu_every"),
    ],
)
def test_bad_configs_are_rejected(kwargs, message):
    with pytest.raises(LuvcError, match=message):
        resolved(**kwargs)


@pytest.mark.parametrize("spec, expected", [(None, None), ("", None), (" AUTO ", None), ("576, 288,0", (576, 288, 0))])
def test_budget_values_reads_the_syntax_only(spec, expected):
    assert budget_values(spec) == expected


def test_budget_values_refuses_non_integers():
    with pytest.raises(LuvcError, match="not a comma-separated list of integers"):
        budget_values("256,half")


def test_ratio_schedule_gives_the_llm_its_share_then_decays_to_zero():
    config = LUVCConfig().resolve(4, 8)
    schedule = ratio_schedule(8, 100, 0.25, config)
    assert schedule[:2] == (25, 25)  # held until spu_start
    assert schedule[-1] == 0 and list(schedule) == sorted(schedule, reverse=True)
    assert schedule == default_schedule(8, 25, config)  # the default shape, from 25 tokens
    assert ratio_schedule(8, 100, 1.0, config)[0] == 100


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5])
def test_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(LuvcError, match=r"is not in \(0, 1\]"):
        ratio_schedule(8, 100, ratio, LUVCConfig().resolve(4, 8))


@pytest.mark.parametrize(
    ("tile", "expected", "cuts"),
    [
        (1, (100, 100, 75, 50, 25, 0), (2, 3, 4, 5)),
        # 75, 50, 25 to the nearest multiple of 8
        (8, (100, 100, 72, 48, 24, 0), (2, 3, 4, 5)),
        # of 64: 75 and 50 both give 64, 25 gives 0 a layer early
        (64, (100, 100, 64, 64, 0, 0), (2, 4)),
    ],
)
def test_budget_tile_rounds_the_schedule_and_merges_cuts(tile, expected, cuts):
    config = LUVCConfig(budget_tile=tile).resolve(vision_depth=4, num_layers=6)
    plan = plan_budgets(6, (100,), config)
    assert plan.total == expected
    assert plan.prune_layers() == cuts


def test_budget_tile_never_raises_a_budget_above_the_tokens():
    config = LUVCConfig(budget_tile=64).resolve(vision_depth=4, num_layers=6)
    # 37 rounds up to 64 and is held at the 50 tokens there are; 25 rounds down to 0
    assert default_schedule(6, 50, config) == (50, 50, 50, 0, 0, 0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"budget_tile": 0}, "budget_tile must be an integer between 1"),
        ({"budget_tile": 64, "budgets": (64, 32, 0)}, "round them yourself"),
    ],
)
def test_bad_budget_tiles_are_refused(options, message):
    with pytest.raises(LuvcError, match=message):
        LUVCConfig(**options)


def test_dart_pivots_above_an_images_tokens_are_refused_and_a_text_only_request_is_planned():
    dart = LUVCConfig(spu_variant="dart", dart_pivots=100).resolve(vision_depth=4, num_layers=4)
    with pytest.raises(LuvcError, match="dart_pivots=100 is more than the 64 visual tokens an image of this input has"):
        plan_budgets(4, (64,), dart)
    assert plan_budgets(4, (128,), dart).total[0] == 128
    assert plan_budgets(4, (), dart).total == (0, 0, 0, 0)  # a text-only request has no image to pick pivots in
    small = LUVCConfig(spu_variant="dart").resolve(vision_depth=4, num_layers=4)  # the default 8: any image
    assert plan_budgets(4, (4,), small).total[0] == 4
