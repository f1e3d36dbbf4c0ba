"""LUVC options: OIM layers, SPU variant, budgets."""

from __future__ import annotations

import argparse
import dataclasses

from luvc.cli.args.base import BaseArgs
from luvc.compress.budgets import budget_values
from luvc.compress.config import SPU_VARIANTS, LUVCConfig
from luvc.errors import critical

OPTION_TYPES = {
    "rho": float,
    "spu_start": int,
    "spu_every": int,
    "final_zero": bool,
    "oim_first_axis": str,
    "oim_temporal": bool,
    "oim_positions": str,
}


class LuvcArgs(BaseArgs):
    """LUVC: how the model is compressed (OIM merge layers, SPU variant and budgets); rare knobs via --option.

    Depends on: Model (budgets are checked against its layer count).
    """

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("LUVC", "How the model is compressed")
        group.add_argument("--no-luvc", action="store_true", help="run the uncompressed model (same code path)")
        group.add_argument(
            "--budgets",
            default=None,
            help="visual tokens entering each decoder layer, e.g. '256,256,128,0' (shorter lists repeat the last "
            "value); default: full until spu_start, then linear decay to 0",
        )
        group.add_argument(
            "--oim-layers",
            default=None,
            help="encoder blocks after which OIM merges, e.g. '7,15'; 'none' disables OIM; default: middle block",
        )
        group.add_argument("--spu", choices=SPU_VARIANTS, default=None, help="SPU scoring (default spectral-residual)")
        group.add_argument(
            "--option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"rare knobs: {', '.join(OPTION_TYPES)}",
        )

    def parse(self, args: argparse.Namespace) -> None:
        if args.no_luvc:
            given = [
                flag
                for flag, value in (("--budgets", args.budgets), ("--oim-layers", args.oim_layers), ("--spu", args.spu))
                if value is not None
            ] + (["--option"] if args.option else [])
            if given:
                critical(f"--no-luvc runs the uncompressed model, so {', '.join(given)} would be ignored; drop one.")
            self.config = LUVCConfig.off()
            return
        options = {}
        for item in args.option:
            key, sep, value = item.partition("=")
            if not sep or key not in OPTION_TYPES:
                critical(f"--option {item!r} is not KEY=VALUE with KEY in {list(OPTION_TYPES)}.")
            options[key] = _convert(key, value)
        oim_layers = None
        if args.oim_layers is not None:
            text = args.oim_layers.strip().lower()
            try:
                oim_layers = () if text in ("none", "") else tuple(int(v) for v in text.split(","))
            except ValueError:
                critical(f"--oim-layers {args.oim_layers!r} is not a comma-separated list of block indices or 'none'.")
        budgets = budget_values(args.budgets)
        self.config = dataclasses.replace(
            LUVCConfig(oim_layers=oim_layers, spu_variant=args.spu, budgets=budgets), **options
        )


def _convert(key: str, value: str):
    kind = OPTION_TYPES[key]
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0"):
            critical(f"--option {key}={value!r}: use true or false.")
        return value.lower() in ("true", "1")
    try:
        return kind(value)
    except ValueError:
        critical(f"--option {key}={value!r} is not a valid {kind.__name__}.")
