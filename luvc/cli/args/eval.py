"""Eval options: the question set, the methods and budget points to compare, or an export to evaluate."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from luvc.cli.args.base import BaseArgs, budget_list
from luvc.cli.args.budget import add_oim_layers_arg, add_option_arg, parse_oim_layers, parse_options
from luvc.compress.budgets import budget_values
from luvc.compress.config import OPTION_PURPOSES, SPU_VARIANTS, LUVCConfig
from luvc.compress.methods import METHODS
from luvc.cuda_graphs import CUDA_GRAPH_CHOICES, DEFAULT_CUDA_GRAPHS
from luvc.errors import critical
from luvc.eval.points import DEFAULT_MAX_NEW_TOKENS, DEFAULT_RATIOS, PROTOCOLS, BudgetPoint
from luvc.eval.sweep import SWEEP_AXES, parse_sweep
from luvc.runtime import BACKEND_CHOICES, BACKEND_HELP, FIT_HELP, FIT_POLICIES


class EvalArgs(BaseArgs):
    """Eval: a question set, the token-reduction methods to compare at equal per-layer budgets (or an export to
    evaluate on a backend), and where the report goes.

    Depends on: nothing (budgets are checked against the model and every question's image before anything runs).
    """

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Eval", "Questions, methods, budget points and the report")
        group.add_argument(
            "--data",
            required=True,
            help="a folder with questions.jsonl and its images or videos, or a .jsonl file (format: docs/eval.md)",
        )
        group.add_argument(
            "--model",
            default=None,
            help="built-in tiny model or checkpoint folder (with --export: default the export's checkpoint)",
        )
        group.add_argument(
            "--methods",
            default=None,
            help=f"comma-separated, from {', '.join(METHODS)} (default: all; none, the reference, always runs)",
        )
        group.add_argument(
            "--ratios",
            default=None,
            help="comma-separated budget points: the share of the visual tokens the LLM receives, then a linear "
            f"decay to zero at the last layer (default {','.join(f'{r:g}' for r in DEFAULT_RATIOS)})",
        )
        group.add_argument(
            "--budgets",
            type=budget_list,
            action="append",
            default=[],
            help="a budget point as explicit per-layer budgets, e.g. '64,64,32,0' (repeat for more; instead of "
            "--ratios; every question must have at least the first budget's visual tokens)",
        )
        group.add_argument(
            "--sweep",
            nargs="?",
            const="all",
            default=None,
            metavar="AXES",
            help=f"run LUVC under every combination of the reconstruction's choices ({', '.join(SWEEP_AXES)}; "
            "default all) at each point, and report the Pareto front and the winner per question type",
        )
        group.add_argument(
            "--protocol",
            choices=list(PROTOCOLS),
            default=None,
            help="a published benchmark's layout: unipruning (keep ratios 1/3, 2/9, 1/9, a random baseline, "
            "accuracy per type and as a share of the uncompressed model's, prefill latency)",
        )
        add_oim_layers_arg(group)
        group.add_argument("--spu", choices=SPU_VARIANTS[:-1], default=None, help="SPU variant of luvc and spu-only")
        add_option_arg(group)
        group.add_argument("--export", default=None, help="evaluate this export folder (its method and budgets)")
        group.add_argument("--backend", choices=BACKEND_CHOICES, default=None, help=f"with --export: {BACKEND_HELP}")
        group.add_argument("--engines", default=None, help="engine folder built from the export (--backend trt)")
        group.add_argument("--fit", choices=FIT_POLICIES, default=None, help="with --export: " + FIT_HELP)
        group.add_argument(
            "--cuda-graphs",
            choices=CUDA_GRAPH_CHOICES,
            default=DEFAULT_CUDA_GRAPHS,
            help="on a CUDA device, replay the export's graphs and the compiled PyTorch LLM prefill as CUDA graphs: "
            "auto (default: the compiled prefill on a CUDA device, the export's graphs not until replay passes its "
            "GPU check again), on, off",
        )
        group.add_argument(
            "--max-new-tokens",
            type=int,
            default=None,
            help=f"tokens generated per answer (default {DEFAULT_MAX_NEW_TOKENS})",
        )
        group.add_argument("--num-samples", type=int, default=None, help="the first N questions only")
        group.add_argument("--out", default=None, help="report folder (default: beside the data or the export)")
        group.add_argument("--overwrite", action="store_true", help="replace an existing report folder")

    def parse(self, args: argparse.Namespace) -> None:
        self.data, self.model = args.data, args.model
        self.export = None if args.export is None else Path(args.export)
        if self.export is not None:
            given = [
                flag
                for flag, value in (
                    ("--methods", args.methods),
                    ("--ratios", args.ratios),
                    ("--budgets", args.budgets),
                    ("--oim-layers", args.oim_layers),
                    ("--spu", args.spu),
                    ("--option", args.option),
                    ("--sweep", args.sweep),
                    ("--protocol", args.protocol),
                )
                if value
            ]
            if given:
                critical(
                    f"--export evaluates the export's own method and budgets, so {', '.join(given)} would be ignored; "
                    "drop them (or leave out --export to compare methods in PyTorch)."
                )
        elif args.backend is not None or args.engines is not None:
            critical("--backend and --engines choose how an export runs; pass --export EXPORT_DIR too.")
        if args.engines is not None and args.backend not in (None, "trt"):
            critical("--engines are TensorRT engines; use --backend trt with them (or drop --engines).")
        self.backend = "trt" if args.engines is not None else args.backend or "ort"
        if self.backend == "trt" and args.engines is None:
            critical("--backend trt runs the engines built from the export; pass --engines ENGINE_DIR.")
        self.engines = args.engines
        if args.fit is not None and self.export is None:
            critical("--fit maps questions onto an export's buckets; pass --export EXPORT_DIR too (or drop --fit).")
        self.fit = args.fit
        self.cuda_graphs = args.cuda_graphs
        self.methods = _methods(args.methods)
        self.points = _points(args.ratios, args.budgets)
        self.protocol = args.protocol
        if self.protocol and self.points is not None:
            critical(
                f"--protocol {self.protocol} sets the budget points (its keep ratios); drop --ratios/--budgets, or "
                "drop --protocol to choose your own."
            )
        self.sweep = parse_sweep(args.sweep) if args.sweep is not None else ()
        if "oim" in self.sweep and args.oim_layers is not None:
            critical(
                "--sweep oim chooses the OIM steps itself; drop --oim-layers, or sweep other axes "
                "(--sweep keep,input,lowpass)."
            )
        if "lowpass" in self.sweep and args.spu not in (None, "spectral-residual"):
            critical(
                f"--sweep lowpass tries the spectral-residual low-pass, but --spu is {args.spu}; drop --spu, or sweep "
                "other axes (--sweep keep,input,oim)."
            )
        options = parse_options(args.option)
        self.base = dataclasses.replace(
            LUVCConfig(oim_layers=parse_oim_layers(args.oim_layers), spu_variant=args.spu), **options
        )
        self._refuse_unread_options(options)
        for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--num-samples", args.num_samples)):
            if value is not None and value < 1:
                critical(f"{flag} {value}: ask for at least 1.")
        self.max_new_tokens, self.limit = args.max_new_tokens, args.num_samples
        self.overwrite = args.overwrite
        self.out = Path(args.out) if args.out else self._default_out()

    def _refuse_unread_options(self, options: dict) -> None:
        """Refuse an ``--option`` knob that no compared method reads (the sweep's variants are LUVC's)."""
        names = list(self.methods or METHODS) + (["luvc"] if self.sweep else [])
        if self.protocol:
            names.append(PROTOCOLS[self.protocol].baseline)
        unread = [
            key
            for key in options
            if all(key in METHODS[name].config(self.base).unread_options([key]) for name in names)
        ]
        if unread:
            critical(
                f"--option {unread[0]} {OPTION_PURPOSES[unread[0]]}; none of the compared methods "
                f"({', '.join(names)}) reads it, so drop it."
            )

    def _default_out(self) -> Path:
        if self.export is not None:
            folder = self.export.resolve()
            return folder.parent / f"{folder.name}-eval"
        data = Path(self.data).resolve()
        folder = data if data.is_dir() else data.parent
        model = Path(self.model).name if self.model else "model"
        return folder.parent / f"{folder.name}-eval-{model}"


def _methods(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        critical(f"--methods {text!r}: {unknown or 'nothing'} is not among {list(METHODS)}.")
    return names


def _points(ratios: str | None, budgets: list[str]) -> list[BudgetPoint] | None:
    if ratios is not None and budgets:
        critical("--ratios and --budgets both give budget points; use one of them.")
    if budgets:
        points = [BudgetPoint(budgets=budget_values(spec)) for spec in budgets]
        if any(point.budgets is None for point in points):
            critical("--budgets takes explicit per-layer budgets, e.g. '64,64,32,0' (use --ratios for shares).")
        twice = next((spec for index, spec in enumerate(budgets) if points[index] in points[:index]), None)
        if twice is not None:
            critical(f"--budgets {twice} is given twice; give each point once.")
        return points
    if ratios is None:
        return None
    points = []
    for part in ratios.split(","):
        try:
            ratio = float(part)
        except ValueError:
            critical(f"--ratios {ratios!r} is not a comma-separated list of numbers in (0, 1], e.g. '0.5,0.25'.")
        if not 0.0 < ratio <= 1.0:
            critical(f"--ratios: {ratio:g} is not in (0, 1]; a ratio is the share of the visual tokens the LLM gets.")
        if BudgetPoint(ratio=ratio) in points:
            critical(f"--ratios {ratios!r} gives {ratio:g} twice; give each point once.")
        points.append(BudgetPoint(ratio=ratio))
    return points
