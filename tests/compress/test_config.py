"""``LUVCConfig``: defaults, refusals that name the option, axis alternation, and the manifest round trip."""

import pytest

from luvc.compress.config import LUVCConfig
from luvc.errors import LuvcError


def test_defaults_for_a_model():
    config = LUVCConfig().resolve(vision_depth=32, num_layers=28)
    assert config.oim_layers == (15,)  # one step in the middle of the encoder
    assert (config.oim_first_axis, config.oim_positions, config.spu_variant) == ("W", "compact", "spectral-residual")
    assert (config.rho, config.spu_start, config.spu_every, config.final_zero) == (0.25, 2, 1, True)
    assert config.resolve(32, 28) == config  # resolving twice changes nothing


def test_off_changes_nothing():
    config = LUVCConfig.off().resolve(4, 4)
    assert config.is_off and config.oim_layers == () and config.oim_axes() == ()
    assert not LUVCConfig().resolve(4, 4).is_off


def test_axes_alternate_from_the_first():
    assert LUVCConfig(oim_layers=(5, 1, 3)).resolve(8, 4).oim_axes() == ("W", "H", "W")
    assert LUVCConfig(oim_layers=(1, 3), oim_first_axis="H").resolve(8, 4).oim_layers == (1, 3)
    assert LUVCConfig(oim_layers=(1, 3), oim_first_axis="H").resolve(8, 4).oim_axes() == ("H", "W")


def test_temporal_merging_joins_the_cycle():
    assert LUVCConfig(oim_layers=(0, 1, 2, 3), oim_temporal=True).resolve(8, 4).oim_axes() == ("W", "H", "T", "W")
    assert LUVCConfig(oim_layers=(0, 1), oim_temporal=True, oim_first_axis="T").resolve(8, 4).oim_axes() == (
        "T",
        "W",
    )
    assert LUVCConfig(oim_layers=(0, 1, 2)).resolve(8, 4).oim_axes() == ("W", "H", "W")  # off by default


BAD_CHOICES = [
    ({"oim_layers": (4,)}, r"outside the encoder's blocks 0\.\.3.*--oim-layers"),
    ({"oim_layers": (1, 1)}, "repeats a block"),
    ({"rho": 1.0}, r"rho must be in \(0, 1\)"),
    ({"rho": 0}, r"rho must be in \(0, 1\)"),
    ({"rho": float("nan")}, r"rho must be in \(0, 1\), got nan"),
    ({"rho": "0.5"}, r"rho must be in \(0, 1\)"),
    ({"spu_start": 4}, "spu_start=4 does not fit a model with 4 decoder layers; use 0..3"),
    ({"spu_start": -1}, "spu_start must be an integer >= 0, got -1"),
    ({"spu_every": 0}, "spu_every must be an integer >= 1"),
    ({"spu_variant": "fourier"}, "spu_variant='fourier' is not one of"),
    ({"oim_first_axis": "T"}, "oim_first_axis='T' is not one of"),
    ({"seed": -1}, "seed must be an integer between 0 and 9223372036854775807, got -1"),
    ({"seed": 2**63}, "seed must be an integer between 0 and 9223372036854775807"),
    ({"seed": True}, "seed must be an integer between 0"),
    ({"dart_pivots": 0}, "dart_pivots must be an integer >= 1"),
    ({"spu_variant": "none", "budgets": (8,)}, r"spu_variant 'none' prunes nothing, so budgets \[8\] would be ignored"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_CHOICES, ids=[str(fields) for fields, _ in BAD_CHOICES])
def test_bad_choices_are_named(fields, message):
    with pytest.raises(LuvcError, match=message):
        LUVCConfig(**fields).resolve(vision_depth=4, num_layers=4)


def test_spu_start_is_free_with_explicit_budgets():
    assert LUVCConfig(spu_start=9, budgets=(8, 4)).resolve(4, 4).budgets == (8, 4)


def test_manifest_round_trip():
    config = LUVCConfig(oim_layers=(1, 2), budgets=(16, 8, 0), rho=0.5).resolve(4, 4)
    assert LUVCConfig.from_dict(config.to_dict()) == config
    assert hash(LUVCConfig.from_dict(config.to_dict())) == hash(config)  # plans are cached by config


def test_baseline_criteria_and_their_knobs():
    config = LUVCConfig(spu_variant="dart").resolve(4, 4)
    assert (config.seed, config.dart_pivots, config.oim_layers) == (0, 8, (1,))
    # VisionZip selects at the encoder output: no OIM by default, and an explicit merge is refused
    assert LUVCConfig(spu_variant="visionzip").resolve(4, 4).oim_layers == ()
    with pytest.raises(LuvcError, match="visionzip selects tokens at the encoder output"):
        LUVCConfig(spu_variant="visionzip", oim_layers=(1,)).resolve(4, 4)
    with pytest.raises(LuvcError, match="dart_pivots must be an integer >= 1"):
        LUVCConfig(spu_variant="dart", dart_pivots=0).resolve(4, 4)
    with pytest.raises(LuvcError, match="spu_variant='median' is not one of"):
        LUVCConfig(spu_variant="median").resolve(4, 4)
