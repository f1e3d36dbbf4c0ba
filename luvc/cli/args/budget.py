"""LUVC options: OIM layers, SPU variant, budgets, or another token-reduction method."""

from __future__ import annotations

import argparse
import dataclasses

from luvc.cli.args.base import BaseArgs, budget_list
from luvc.compress.budgets import budget_values
from luvc.compress.config import OPTION_PURPOSES, SPU_VARIANTS, LUVCConfig
from luvc.compress.methods import METHODS, SPU
from luvc.errors import critical

OPTION_TYPES = {
    "rho": float,
    "spu_start": int,
    "spu_every": int,
    "budget_tile": int,
    "final_zero": bool,
    "oim_first_axis": str,
    "oim_temporal": bool,
    "oim_positions": str,
    "seed": int,
    "dart_pivots": int,
    "spu_keep": str,
    "spu_input": str,
    "spu_lowpass": str,
}


class LuvcArgs(BaseArgs):
    """LUVC: how the model is compressed (OIM merge layers, SPU variant and budgets, or another token-reduction
    method); rare knobs via --option.

    Depends on: Model (budgets are checked against its layer count).
    """

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("LUVC", "How the model is compressed")
        group.add_argument("--no-luvc", action="store_true", help="run the uncompressed model (same code path)")
        group.add_argument(
            "--budgets",
            type=budget_list,
            default=None,
            help="visual tokens entering each decoder layer, e.g. '256,256,128,0' (shorter lists repeat the last "
            "value); default: full until spu_start, then linear decay to 0",
        )
        add_oim_layers_arg(group)
        group.add_argument("--spu", choices=SPU_VARIANTS, default=None, help="SPU scoring (default spectral-residual)")
        group.add_argument(
            "--method",
            choices=list(METHODS),
            default=None,
            help="a token-reduction method instead of LUVC (luvc-export eval compares them): "
            + "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()),
        )
        add_option_arg(group)

    def parse(self, args: argparse.Namespace) -> None:
        if args.no_luvc and args.method is not None:
            critical("--no-luvc and --method both choose the method; drop one (--method none is --no-luvc).")
        if args.no_luvc or args.method == "none":
            flag = "--no-luvc" if args.no_luvc else "--method none"
            given = [
                name
                for name, value in (("--budgets", args.budgets), ("--oim-layers", args.oim_layers), ("--spu", args.spu))
                if value is not None
            ] + (["--option"] if args.option else [])
            if given:
                critical(f"{flag} runs the uncompressed model, so {', '.join(given)} would be ignored; drop one.")
            self.config = LUVCConfig.off()
            return
        oim_layers, budgets = parse_oim_layers(args.oim_layers), budget_values(args.budgets)
        options = parse_options(args.option)
        base = dataclasses.replace(LUVCConfig(oim_layers=oim_layers, spu_variant=args.spu, budgets=budgets), **options)
        if args.method is None:
            self.config = base
            refuse_unread_options(base, options, f"LUVC with --spu {base.spu_variant or SPU_VARIANTS[0]}")
            return
        chosen = METHODS[args.method]
        if args.spu is not None and chosen.criterion != SPU:
            critical(f"--method {chosen.name} does not prune with SPU; drop --spu.")
        spu_knobs = [key for key in ("spu_keep", "spu_input", "spu_lowpass") if getattr(base, key) is not None]
        if spu_knobs and chosen.criterion != SPU:
            critical(
                f"--method {chosen.name} does not prune with SPU, so {', '.join(spu_knobs)} change how SPU scores "
                "tokens and would be ignored; drop them."
            )
        if oim_layers is not None and not chosen.merges:
            critical(f"--method {chosen.name} does not merge in the encoder; drop --oim-layers.")
        if budgets is not None and not chosen.follows_budgets:
            critical(f"--method {chosen.name} prunes nothing in the LLM; drop --budgets.")
        self.config = chosen.config(base, budgets)
        refuse_unread_options(self.config, options, f"--method {chosen.name}")


def refuse_unread_options(config: LUVCConfig, options: dict, label: str) -> None:
    """Refuse ``--option`` knobs that ``config`` (the method ``label`` names) would never read."""
    unread = config.unread_options(options)
    if unread:
        critical(f"--option {unread[0]} {OPTION_PURPOSES[unread[0]]}; {label} does not read it, so drop it.")


def add_oim_layers_arg(group) -> None:
    """``--oim-layers``: the encoder blocks after which OIM merges."""
    group.add_argument(
        "--oim-layers",
        default=None,
        help="encoder blocks after which OIM merges, e.g. '7,15'; 'none' disables OIM; default: middle block",
    )


def add_option_arg(group) -> None:
    """``--option KEY=VALUE`` (repeatable): the rare LUVC knobs of ``OPTION_TYPES``."""
    group.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help=f"rare knobs: {', '.join(OPTION_TYPES)}"
    )


def parse_oim_layers(text: str | None) -> tuple[int, ...] | None:
    """``--oim-layers``: block indices, ``()`` for 'none', ``None`` when not given (the default)."""
    if text is None:
        return None
    cleaned = text.strip().lower()
    try:
        return () if cleaned in ("none", "") else tuple(int(v) for v in cleaned.split(","))
    except ValueError:
        critical(f"--oim-layers {text!r} is not a comma-separated list of block indices or 'none'.")


def parse_options(items: list[str]) -> dict:
    """``--option KEY=VALUE`` items as ``LUVCConfig`` fields."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in OPTION_TYPES:
            critical(f"--option {item!r} is not KEY=VALUE with KEY in {list(OPTION_TYPES)}.")
        options[key] = _convert(key, value)
    return options


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
