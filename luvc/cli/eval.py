"""``luvc-export eval``: task accuracy against speed on a question set, LUVC beside other token-reduction methods at
equal per-layer budgets, or an export on its backend."""

from __future__ import annotations

import argparse

from rich.console import Console

from luvc.cli.args.eval import EvalArgs
from luvc.staging import output_claim


class Eval:
    """Run a visual-question set through the model once per method and budget point (or through an export on ONNX
    Runtime or TensorRT) and report accuracy, agreement with the uncompressed model, visual tokens per layer, FLOPs
    and time to first token: eval.json, report.md and a Pareto plot."""

    name = "eval"
    install = "export"
    subscriptions = (EvalArgs,)

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace, groups: dict) -> int:
        from luvc.eval.data import load_eval_set
        from luvc.eval.report import EVAL_OUTPUT, write_report
        from luvc.eval.runner import EvalFromModel
        from luvc.eval.sweep import analyse_sweep

        options = groups[EvalArgs]
        inputs = (options.data, options.export, options.engines, options.model)
        with output_claim(options.out, options.overwrite, EVAL_OUTPUT, inputs):  # before any model loads
            data = load_eval_set(options.data, options.limit)
            results = EvalFromModel(
                data,
                model=options.model,
                methods=options.methods,
                points=options.points,
                base=options.base,
                max_new_tokens=options.max_new_tokens,
                export_dir=options.export,
                backend=options.backend,
                engines_dir=options.engines,
                show_progress=True,
                fit=options.fit,
                sweep=options.sweep,
                protocol=options.protocol,
                cuda_graphs=options.cuda_graphs,
            )()
            out = write_report(results, options.out, options.overwrite)
        console = Console(soft_wrap=True, markup=False)  # a sweep variant's label holds brackets
        console.print(str(results), highlight=False)
        sweep = analyse_sweep(results)
        if sweep is not None:
            front = ", ".join(f"{point.variant} @ {point.point}" for point in sweep.front)
            console.print(f"sweep: Pareto front (cheapest first): {front}", highlight=False)
            for kind, variant in sweep.winners.items():
                console.print(f"sweep: best on {kind}: {variant}", highlight=False)
        console.print(f"report: {out / 'report.md'}", highlight=False)
        return 0
