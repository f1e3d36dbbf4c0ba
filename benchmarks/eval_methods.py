"""Time to first token of every token-reduction method at equal per-layer budgets, through ``luvc-export eval``'s
runner, on the random-weight Qwen2-VL of ``prefill_speedup.py`` (Qwen2-0.5B-shaped LLM with 24 layers, 8-block
encoder of width 640), in one run.

``--questions N`` synthetic 896x896 images (1024 visual tokens each) with a yes/no question; every method at
``--ratios`` (default 0.5 and 0.25), one new token per answer. The runner times each run of a question right after the
others and warms every run up once. Random weights make accuracy meaningless here: this measures cost. Prints each
run's median TTFT, its ratio to the uncompressed model's (measured) and the cost model's ratio of encoder + LLM
prefill FLOPs (predicted), then per point the spread of TTFT among the methods that prune in the LLM alone (at equal
budgets their decoder layers cost the same). Last line: ``eval_luvc_ttft_speedup=<x>`` (luvc at the first ratio
against none). Usage:
    python benchmarks/eval_methods.py [--questions 3] [--ratios 0.5,0.25] [--layers 24]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments
from prefill_speedup import IMAGE_SIDE, realistic_adapter  # noqa: E402

from luvc.eval.data import load_eval_set  # noqa: E402
from luvc.eval.points import BudgetPoint  # noqa: E402
from luvc.eval.runner import EvalFromModel  # noqa: E402
from luvc.images import synthetic_image  # noqa: E402

LLM_ONLY = ("spu-only", "random", "l2-norm", "dart", "fastv", "visionzip")  # no OIM: same encoder, same layer budgets


def main() -> None:
    parser = arguments(__doc__, questions=3)
    parser.add_argument("--ratios", default="0.5,0.25")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default 24)")
    args = parser.parse_args()
    adapter = realistic_adapter("qwen2-vl", args.layers)
    points = [BudgetPoint(ratio=float(r)) for r in args.ratios.split(",")]
    print(
        f"{adapter.name} ({adapter.num_layers} decoder layers): torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {args.questions} questions of {IMAGE_SIDE}x{IMAGE_SIDE}, ratios {args.ratios}"
    )
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        records = []
        for index in range(args.questions):
            synthetic_image(IMAGE_SIDE, IMAGE_SIDE, seed=index).save(data / f"{index}.png")
            records.append(
                {"image": f"{index}.png", "question": "Is there a circle?", "answer": "yes", "type": "yes-no"}
            )
        (data / "questions.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
        results = EvalFromModel(load_eval_set(data), model=adapter, points=points, max_new_tokens=1)()
    reference = results.summary(results.reference)
    print(f"{'run':<34} {'TTFT ms':>9} {'measured':>9} {'predicted':>9} {'tokens/layer':>12}")
    for summary in results.summaries():
        measured = reference.ttft_ms / summary.ttft_ms
        predicted = reference.total_gflops / summary.total_gflops
        print(
            f"{summary.label:<34} {summary.ttft_ms:>9.1f} {measured:>8.2f}x {predicted:>8.2f}x "
            f"{summary.mean_visual_tokens:>12.1f}"
        )
    for point in points:
        times = {name: results.summary(results.run(name, point.label)).ttft_ms for name in LLM_ONLY}
        fastest = min(times.values())
        spread = ", ".join(f"{name} {value / fastest:.3f}" for name, value in times.items())
        print(f"{point.label}: TTFT of the LLM-only methods against the fastest of them: {spread}")
    luvc = results.summary(results.run("luvc", points[0].label))
    print(f"eval_luvc_ttft_speedup={reference.ttft_ms / luvc.ttft_ms:.2f}")


if __name__ == "__main__":
    main()
