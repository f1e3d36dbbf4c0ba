"""Export wall time, stage by stage, at a 2B model's widths, against an earlier commit's export in the same run.

Builds random-weight checkpoints with Qwen2-VL-2B's widths (``luvc.models.tiny.save_random_qwen2_vl``, bf16 as
checkpoints ship) and each of ``--layers`` decoder-layer counts (8 and 28, the real depth) with ``--vision-blocks``
encoder blocks (32, the real depth). Each is exported as ``luvc-export export --precision fp16 --image-size 448x448``
does it (loaded in fp16, then ``export_model``), in a child process whose peak RSS the kernel reports, and the child
prints where the time went (``luvc.export.stage_times``: load, trace and convert per graph, weight writing, each
graph pass, lint, save, hashing, manifest). The built-in ``tiny-qwen2-vl`` is exported the same way (fp32, 224x224).
With ``--baseline REF`` (default: the last commit before the export-speed work), the same exports run with that
commit's code (a git worktree) in the same run, for the ratios. Peak RSS is against the checkpoint's weight bytes
after a fixed allowance (a process that only imports what export imports).

The per-layer slope is (time at the most layers - time at the fewest) / (the difference in layers). Last lines:
``export_seconds_28=<x>`` and ``export_seconds_tiny=<x>`` (the current tree). Usage:
    python benchmarks/export_time.py [--layers 8 28] [--vision-blocks 32] [--baseline 38a6c78] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import TreeMemory, arguments, import_allowance

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "38a6c78"  # main before the export-speed work
IMAGE_SIDE = 448


def worker(model: str, out: str, precision: str, side: int) -> None:
    """Load and export ``model`` as the CLI does, printing the stage times as JSON, and end as the CLI ends (the
    child's job)."""
    import torch

    from luvc.cli.main import exit_process
    from luvc.export.exporter import export_model
    from luvc.export.profile import ExportProfile
    from luvc.export.stage_times import StageTimes
    from luvc.models import load_model

    times = StageTimes()
    with times.stage("load"):
        adapter = load_model(model, dtype=torch.float16 if precision == "fp16" else torch.float32)
    profile = ExportProfile(image_sizes=((side, side),), precision=precision)
    export_model(adapter, out, profile, overwrite=True, show_progress=False, times=times)
    print(json.dumps({"stages": times.by_stage(), "graphs": times.by_graph()}))
    exit_process(0)


def measured(argv: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, int, int, str]:
    """(seconds, peak RSS in bytes, peak PSS of it and its graph workers in bytes, stdout) of a child ``python argv``;
    exits when it fails."""
    began = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout:
        process = subprocess.Popen([sys.executable, *argv], stdout=stdout, stderr=subprocess.DEVNULL, env=env, cwd=cwd)
        memory = TreeMemory(process.pid)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - began
        tree_peak = memory.stop()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"export_time: `{' '.join(argv[:4])} ...` failed")
        stdout.seek(0)
        return seconds, usage.ru_maxrss * 1024, tree_peak, stdout.read()


def export_current(model: str, out: Path, precision: str, side: int) -> tuple[float, int, int, dict]:
    seconds, rss, tree, stdout = measured([__file__, "--worker", model, str(out), precision, str(side)])
    return seconds, rss, tree, json.loads(stdout.strip().splitlines()[-1])


def export_baseline(tree: Path, model: str, out: Path, precision: str, side: int) -> tuple[float, int]:
    """The baseline commit's ``luvc-export export`` (its code first on the path) for the same model. It runs in the
    baseline's folder: ``python -m`` puts the working folder before ``PYTHONPATH``, so from this checkout it would
    import this checkout's code."""
    model = model if not Path(model).exists() else str(Path(model).resolve())
    argv = ["-m", "luvc.cli.main", "export", "--model", model, "--out", str(Path(out).resolve()), "--overwrite"]
    argv += ["--precision", precision, "--image-size", f"{side}x{side}"]
    seconds, rss, _, _ = measured(argv, env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree)
    return seconds, rss


def checkpoint(workdir: Path, layers: int, blocks: int) -> Path:
    """A random-weight 2B-shaped checkpoint with ``layers`` and ``blocks``, made once in ``workdir``."""
    folder = workdir / f"qwen2-vl-2b-{layers}l-{blocks}b"
    if not (folder / "config.json").exists():
        code = (
            "import sys, torch; from luvc.models.tiny import save_random_qwen2_vl; "
            f"save_random_qwen2_vl(sys.argv[1], {layers}, {blocks}, torch.bfloat16, ({IMAGE_SIDE}, {IMAGE_SIDE}))"
        )
        subprocess.run([sys.executable, "-c", code, str(folder)], check=True, capture_output=True)
    return folder


def table(stages: dict[str, dict[str, float]]) -> str:
    """Stage seconds per run, one row per stage."""
    names = list(stages)
    rows = [f"{'stage':<14}" + "".join(f"{name:>14}" for name in names)]
    for stage in dict.fromkeys(key for run in stages.values() for key in run):
        rows.append(f"{stage:<14}" + "".join(f"{stages[name].get(stage, 0.0):>14.1f}" for name in names))
    return "\n".join(rows)


def main() -> None:
    parser = arguments(__doc__, vision_blocks=32)
    parser.add_argument("--layers", type=int, nargs="+", default=[8, 28])
    parser.add_argument("--baseline", default=BASELINE, help="a git ref to compare with ('none': no baseline)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the checkpoints here between runs")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.worker:
        model, out, precision, side = args.worker
        return worker(model, out, precision, int(side))
    with tempfile.TemporaryDirectory(prefix="luvc-export-time-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        tree = None
        if args.baseline != "none":
            tree = Path(tmp) / "baseline"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.baseline], check=True
            )
        try:
            runs = {"tiny": ("tiny-qwen2-vl", "fp32", 224, None)}
            for layers in args.layers:
                folder = checkpoint(workdir, layers, args.vision_blocks)
                weights = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
                runs[f"{layers} layers"] = (str(folder), "fp16", IMAGE_SIDE, weights)
            allowance = import_allowance()
            seconds, stages = {}, {}
            for name, (model, precision, side, weights) in runs.items():
                seconds[name], rss, tree_pss, report = export_current(model, Path(tmp) / "out", precision, side)
                stages[name] = report["stages"]
                line = f"{name}: {seconds[name]:.1f} s"
                if weights:
                    line += f", peak RSS {(rss - allowance) / weights:.2f}x the weights ({rss / (1 << 30):.2f} GiB)"
                    line += f", with its graph workers {tree_pss / (1 << 30):.2f} GiB (PSS)"
                if tree is not None:
                    before, before_rss = export_baseline(tree, model, Path(tmp) / "before", precision, side)
                    line += f"; {args.baseline}: {before:.1f} s ({before / seconds[name]:.2f}x faster now)"
                    if weights:
                        line += f", peak RSS {(before_rss - allowance) / weights:.2f}x"
                print(line, flush=True)
        finally:
            if tree is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)
    print(table(stages))
    if len(args.layers) > 1:
        low, high = min(args.layers), max(args.layers)
        slope = (seconds[f"{high} layers"] - seconds[f"{low} layers"]) / (high - low)
        print(f"per decoder layer: {slope:.1f} s")
    deepest = max(args.layers)
    print(f"export_seconds_{deepest}={seconds[f'{deepest} layers']:.1f}")
    print(f"export_seconds_tiny={seconds['tiny']:.1f}")


if __name__ == "__main__":
    main()
