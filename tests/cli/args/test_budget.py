"""The LUVC argument group: flags become one LUVCConfig; contradictions and bad values are named."""

import argparse

import pytest

from luvc.cli.args.budget import LuvcArgs
from luvc.compress.config import LUVCConfig
from luvc.errors import LuvcError


def _parse(*argv: str) -> LUVCConfig:
    group = LuvcArgs()
    parser = argparse.ArgumentParser()
    group.add_parser_args(parser)
    group.parse(parser.parse_args(list(argv)))
    return group.config


def test_flags_and_options_make_one_config():
    config = _parse("--budgets", "64,32,0", "--oim-layers", "1,3", "--spu", "channel-spectrum", "--option", "rho=0.5")
    assert config == LUVCConfig(oim_layers=(1, 3), spu_variant="channel-spectrum", budgets=(64, 32, 0), rho=0.5)
    assert _parse("--oim-layers", "none").oim_layers == ()
    assert _parse("--option", "final_zero=false").final_zero is False
    assert _parse("--no-luvc").is_off


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--no-luvc", "--budgets", "8"), "--no-luvc runs the uncompressed model, so --budgets would be ignored"),
        (("--option", "rho"), "--option 'rho' is not KEY=VALUE"),
        (("--option", "colour=red"), "is not KEY=VALUE with KEY in"),
        (("--option", "rho=high"), "--option rho='high' is not a valid float"),
        (("--option", "final_zero=maybe"), "use true or false"),
        (("--oim-layers", "middle"), "is not a comma-separated list of block indices or 'none'"),
    ],
)
def test_bad_flags_are_named(argv, message):
    with pytest.raises(LuvcError, match=message):
        _parse(*argv)


def test_method_sets_merging_and_criterion():
    dart = _parse("--method", "dart", "--budgets", "32,16,0", "--option", "dart_pivots=4")
    assert dart == LUVCConfig(oim_layers=(), spu_variant="dart", budgets=(32, 16, 0), dart_pivots=4)
    assert _parse("--method", "oim-only", "--oim-layers", "0") == LUVCConfig(oim_layers=(0,), spu_variant="none")
    assert _parse("--method", "luvc", "--spu", "channel-spectrum").spu_variant == "channel-spectrum"
    assert _parse("--method", "none").is_off


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--method", "fastv", "--spu", "channel-spectrum"), "--method fastv does not prune with SPU; drop --spu"),
        (("--method", "spu-only", "--oim-layers", "1"), "does not merge in the encoder; drop --oim-layers"),
        (("--method", "oim-only", "--budgets", "8,0"), "prunes nothing in the LLM; drop --budgets"),
        (("--method", "luvc", "--no-luvc"), "--no-luvc and --method both choose the method"),
        (("--method", "none", "--budgets", "8"), "--method none runs the uncompressed model, so --budgets"),
    ],
)
def test_method_contradictions_are_named(argv, message):
    with pytest.raises(LuvcError, match=message):
        _parse(*argv)
