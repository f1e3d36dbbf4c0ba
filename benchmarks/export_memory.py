"""Peak host memory of ``export`` and ``parity`` on a real-width checkpoint, against its weight bytes.

Builds a random-weight checkpoint with Qwen2-VL-2B's widths (LLM hidden 1536, MLP 8960, 12 heads, 2 KV heads,
vocabulary 151936, tied embedding; encoder 1280 wide, 16 heads; merger to 1536) and ``--layers`` decoder layers and
``--vision-blocks`` encoder blocks (fewer than the real 28 and 32, so it runs in minutes), saved with
``save_pretrained`` in ``--dtype`` (bf16, as current checkpoints ship). Then runs, each in a child process whose
peak RSS the kernel reports (``wait4``): ``luvc-export export --precision fp16`` at one 448x448 bucket, and
``luvc-export parity`` on that export (one sample, 4 tokens). Ratios are (peak RSS - the fixed allowance) / the
checkpoint's weight bytes, where the allowance is the peak RSS of a process that only imports what export imports,
measured in the same run; the raw ratio is printed too.
Then ``luvc-export run`` on the export (ONNX Runtime CPU, 8 tokens), whose ratio is against the export folder's bytes.
Last line: ``export_peak_rss_ratio=<x>`` (target <= 1.5, plus a fixed allowance); the line before it
``parity_peak_rss_ratio=<x>`` (target <= 2.0), and before that ``run_peak_rss_ratio=<x>``. Usage:
    python benchmarks/export_memory.py [--layers 4] [--vision-blocks 4] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import arguments, import_allowance

from luvc.models.tiny import save_random_qwen2_vl

IMAGE_SIDE = 448
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def peak_rss(argv: list[str]) -> tuple[int, float, int]:
    """(peak RSS in bytes, seconds, exit code) of ``luvc-export argv`` in a child process; exits if it fails.
    Linux counts a child's peak from the fork, when it is a copy of this process: so this process never holds a
    model (the checkpoint is written by a child of its own)."""
    began = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "luvc.cli.main", *argv], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0, 1):  # parity exits 1 when a tolerance fails: still a measurement
        raise SystemExit(f"luvc-export {argv[0]} failed with exit code {process.returncode}")
    return usage.ru_maxrss * 1024, time.perf_counter() - began, process.returncode


def main() -> None:
    parser = arguments(__doc__, layers=4, vision_blocks=4)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--write-checkpoint", type=Path, default=None, help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.write_checkpoint is not None:
        save_random_qwen2_vl(
            args.write_checkpoint, args.layers, args.vision_blocks, DTYPES[args.dtype], (IMAGE_SIDE,) * 2
        )
        return
    with tempfile.TemporaryDirectory(prefix="luvc-export-memory-") as tmp:
        checkpoint, export = Path(tmp) / "checkpoint", Path(tmp) / "export"
        child = [sys.executable, __file__, "--write-checkpoint", str(checkpoint), "--dtype", args.dtype]
        child += ["--layers", str(args.layers), "--vision-blocks", str(args.vision_blocks)]
        subprocess.run(child, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        weight_bytes = sum(path.stat().st_size for path in checkpoint.glob("*.safetensors"))
        size = f"{IMAGE_SIDE}x{IMAGE_SIDE}"
        allowance = import_allowance()
        export_rss, export_s, _ = peak_rss(
            ["export", "--model", str(checkpoint), "--out", str(export), "--image-size", size, "--precision", "fp16"]
        )
        export_bytes = sum(p.stat().st_size for p in export.rglob("*") if p.is_file())
        parity_args = ["parity", str(export), "--num-samples", "1", "--max-new-tokens", "4", "--out", f"{tmp}/p"]
        parity_rss, parity_s, parity_code = peak_rss(parity_args)
        run_rss, run_s, _ = peak_rss(["run", str(export), "--prompt", "Describe the image.", "--max-new-tokens", "8"])
    gib = 1 << 30
    print(
        f"Qwen2-VL-2B widths, {args.layers} decoder layers, {args.vision_blocks} encoder blocks, {args.dtype} "
        f"checkpoint: {weight_bytes / gib:.2f} GiB of weights; export folder {export_bytes / gib:.2f} GiB"
    )
    print(f"fixed allowance (a process that only imports what export imports): {allowance / gib:.2f} GiB")
    print(f"export: peak RSS {export_rss / gib:.2f} GiB in {export_s:.0f} s ({export_rss / weight_bytes:.2f}x with it)")
    verdict = "PASSED" if parity_code == 0 else "FAILED"
    print(f"parity ({verdict}): peak RSS {parity_rss / gib:.2f} GiB in {parity_s:.0f} s")
    print(f"run (ONNX Runtime CPU, 8 tokens): peak RSS {run_rss / gib:.2f} GiB in {run_s:.0f} s")
    print(f"run_peak_rss_ratio={(run_rss - allowance) / export_bytes:.2f} (of the export folder's bytes)")
    print(f"parity_peak_rss_ratio={(parity_rss - allowance) / weight_bytes:.2f}")
    print(f"export_peak_rss_ratio={(export_rss - allowance) / weight_bytes:.2f}")


if __name__ == "__main__":
    main()
