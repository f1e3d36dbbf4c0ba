"""Device weight bytes of the shared layout against the embedded one, on a Qwen2-VL-2B-shaped fp16 export.

Builds a random-weight checkpoint with Qwen2-VL-2B's widths (``luvc.models.tiny.QWEN2_VL_2B_WIDTHS``: LLM hidden
1536, MLP 8960, vocabulary 151936, tied embedding; encoder 1280 wide) with ``--layers`` decoder layers (28, as the
real model) and ``--vision-blocks`` encoder blocks, exports it in fp16 with two image buckets (448x448, 672x672) and
one video bucket (4x448x448), and builds its engines with TensorRT-RTX (which builds without a GPU). Then prints, from
``luvc-export plan`` on the engine folder, the device weight bytes of the shared layout (each weight once, bound to
every engine; what each engine keeps inside) and of the embedded layout (every engine its own copy), and last
``weight_copies=<x>``: device weight bytes / the checkpoint's weight bytes in the export precision (target
<= 1.05). The line before it says whether ``plan --target orin-8gb`` fits at the export's ``--max-batch 1`` (the same
``plan_memory`` that command prints).

The INT4 row: the fp16 export calibrated to INT4 weight-only (``--method rtn``: GPTQ stores the same bytes), built
the same way. TensorRT folds a weight read through a ``DequantizeLinear`` into each engine (TensorRT 10.3's
``IDequantizeLayer`` takes block-quantized INT4 only from an ``IConstantLayer``), so each prefill bucket and decode
hold their own INT4 LLM; ``int4_weight_copies=<x>`` is the device bytes over the INT4 export's own weight bytes (its
``weights.data``, each tensor once). Usage:
    python benchmarks/device_memory.py [--layers 28] [--vision-blocks 32] [--no-int4]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from common import arguments, luvc_export

from luvc.engines.memory import GiB, plan_memory
from luvc.models.tiny import save_random_qwen2_vl

BUCKETS = ("--image-size", "448x448", "--image-size", "672x672", "--video-size", "4x448x448")


def main() -> None:
    parser = arguments(__doc__, layers=28, vision_blocks=32)
    parser.add_argument("--no-int4", dest="int4", action="store_false", help="leave out the INT4 row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="luvc-device-memory-") as tmp:
        checkpoint, export, engines = (Path(tmp) / name for name in ("checkpoint", "export", "engines"))
        save_random_qwen2_vl(checkpoint, args.layers, args.vision_blocks, torch.float16, (448, 672))
        weight_bytes = sum(path.stat().st_size for path in checkpoint.glob("*.safetensors"))
        exported = luvc_export(
            "export",
            "--model",
            str(checkpoint),
            "--out",
            str(export),
            *BUCKETS,
            "--max-batch",
            "1",
            "--precision",
            "fp16",
        )
        built = luvc_export(
            "build", str(export), "--target", "ampere", "--out", str(engines), "--tensorrt-module", "tensorrt_rtx"
        )
        plan = plan_memory(export, "orin-8gb", engines)
        if args.int4:
            int4, int4_engines = Path(tmp) / "int4", Path(tmp) / "int4-engines"
            calibrated = luvc_export(
                "calibrate", str(export), "--precision", "int4", "--method", "rtn", "--out", str(int4)
            )
            int4_built = luvc_export(
                "build",
                str(int4),
                "--target",
                "ampere",
                "--out",
                str(int4_engines),
                "--tensorrt-module",
                "tensorrt_rtx",
            )
            int4_plan = plan_memory(int4, "orin-8gb", int4_engines)
            int4_bytes = (int4 / "weights.data").stat().st_size
    weights = plan.weights
    inside = sum(weights.per_engine.values())
    print(
        f"Qwen2-VL-2B widths, {args.layers} decoder layers, {args.vision_blocks} encoder blocks, fp16: "
        f"{weight_bytes / GiB:.2f} GiB of weights; export {exported:.0f} s, TensorRT-RTX build {built:.0f} s"
    )
    print(f"engines ({len(weights.per_engine)}): {inside / GiB:.2f} GiB of engine files")
    print(
        f"shared layout: {weights.shared / GiB:.2f} GiB of weights once + {inside / GiB:.2f} GiB in the engines = "
        f"{weights.total / GiB:.2f} GiB on the device"
    )
    print(f"embedded layout (every engine its own copy): {weights.embedded_layout / GiB:.2f} GiB on the device")
    print(
        f"plan --target orin-8gb at --max-batch 1: {'fits' if plan.fits else 'does not fit'} "
        f"({plan.total_bytes / GiB:.2f} of {plan.device.total_bytes / GiB:.0f} GiB)"
    )
    if args.int4:
        placed = int4_plan.weights
        inside = sum(placed.per_engine.values())
        print(
            f"int4 (RTN, calibrate {calibrated:.0f} s, build {int4_built:.0f} s): {int4_bytes / GiB:.2f} GiB of "
            f"weights in the export; on the device {placed.shared / GiB:.2f} GiB once + {inside / GiB:.2f} GiB in the "
            f"engines = {placed.total / GiB:.2f} GiB; plan --target orin-8gb: "
            f"{'fits' if int4_plan.fits else 'does not fit'} ({int4_plan.total_bytes / GiB:.2f} GiB)"
        )
        print(f"int4_weight_copies={placed.total / int4_bytes:.3f}")
    print(f"weight_copies={weights.total / weight_bytes:.3f}")


if __name__ == "__main__":
    main()
