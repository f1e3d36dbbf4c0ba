"""fp32, fp16, INT8 and INT4 exports of a Qwen2-VL-2B-shaped model on ONNX Runtime CPU: speed, bytes, device memory
and agreement, in one run.

Builds a random-weight checkpoint with Qwen2-VL-2B's widths (``luvc.models.tiny.QWEN2_VL_2B_WIDTHS``: LLM hidden
1536, MLP 8960, vocabulary 151936, tied embedding; encoder 1280 wide) with ``--layers`` decoder layers and
``--vision-blocks`` encoder blocks, exports it in fp32 and fp16 (one ``--side`` square bucket), and quantizes the
fp32 export with ``luvc-export calibrate`` to INT8 (minmax, the default; and ``int8-sq``, with ``--smooth 0.5``) and
to INT4 weight-only (GPTQ, the default, blocks of 128), and the fp16 export to INT4 too (``int4-fp16``: what a
Jetson deploys, the unquantized rest in fp16). Then, per export: the export's bytes, the bytes of the LLM's linear
weights (every ``/llm/layers.*`` MatMul weight, with its INT4 scales), what ``luvc-export plan`` puts on an 8 GB
Orin (weights, and everything with the KV cache, activations and the system's reserve), and the median prefill
(vision + prefill graphs) and decode-step wall times over ``--repeats`` requests of ``--new-tokens`` tokens, the
exports taking turns so CPU drift cancels (fp16 graphs run in float32 on ONNX Runtime CPU, as the runtime runs them
there). Last lines: ``int4_decode_speedup=<x>``, ``int4_plan_weight_ratio=<x>`` (``int4-fp16`` plan weights / fp16
plan weights), ``int8_prefill_speedup=<x>`` (fp32 prefill ms / INT8 prefill ms), ``int8_decode_speedup=<x>`` (fp32
decode step / INT8 decode step; target >= 1.0), ``int8_smooth_decode_speedup=<x>`` (the same for ``int8-sq``) and
``int4_weight_ratio=<x>`` (INT4 linear weight bytes / the same weights in fp16; target <= 0.3). Usage:
    python benchmarks/quantized.py [--layers 4] [--vision-blocks 2] [--side 448] [--repeats 5]
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime
import torch
from common import arguments

from luvc.calibration import calibrate_export
from luvc.engines.memory import plan_memory
from luvc.export.exporter import export_model
from luvc.export.manifest import ExportManifest, ExternalTensor
from luvc.export.profile import ExportProfile
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.tiny import save_random_qwen2_vl
from luvc.runtime.pipeline import GenerationOptions, Pipeline

MiB = 1 << 20
PLAN_TARGET = "orin-8gb"
LLM_LAYERS = "/llm/layers."
SMOOTH = 0.5  # int8-sq: calibrate --smooth 0.5 (SmoothQuant, which brings the down projections under the tail bound)


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Stored bytes of an initializer, inline or external (read from its recorded length)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return ExternalTensor.of(tensor).length
    return len(tensor.raw_data)


def linear_weight_bytes(folder: Path, graph: str) -> tuple[int, int]:
    """``(stored bytes, fp16 bytes)`` of the LLM's linear weights in ``graph``: each ``/llm/layers.*`` MatMul's weight,
    read directly or through its ``DequantizeLinear`` (INT4 values and scales)."""
    model = onnx.load(str(folder / f"{graph}.onnx"), load_external_data=False)
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    stored = fp16 = 0
    for node in model.graph.node:
        if node.op_type != "MatMul" or not node.name.startswith(LLM_LAYERS):
            continue
        weight = node.input[1]
        if weight in initializers:
            tensors = [initializers[weight]]
        elif weight in producers and producers[weight].op_type == "DequantizeLinear":
            tensors = [initializers[name] for name in producers[weight].input if name in initializers]
        else:
            continue  # a product of two activations
        stored += sum(tensor_bytes(tensor) for tensor in tensors)
        elements = 1
        for dim in tensors[0].dims:
            elements *= dim
        fp16 += 2 * elements
    return stored, fp16


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def time_requests(pipeline: Pipeline, side: int, new_tokens: int) -> tuple[float, float]:
    """``(prefill ms, decode ms per step)`` of one request of ``new_tokens`` greedy tokens."""
    options = GenerationOptions(new_tokens, stop_token_ids=())  # every request generates all its tokens
    timings = pipeline.generate([synthetic_image(side, side)], "Describe the image.", options).timings
    steps = max(timings.new_tokens - 1, 1)
    return timings.vision_ms + timings.prefill_ms, timings.decode_ms / steps


def main() -> None:
    parser = arguments(__doc__, layers=4, vision_blocks=2, side=448, repeats=5, new_tokens=8)
    args = parser.parse_args()
    print(f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(prefix="luvc-quantized-") as tmp:
        checkpoint = Path(tmp) / "checkpoint"
        save_random_qwen2_vl(checkpoint, args.layers, args.vision_blocks, torch.float32, (args.side, args.side))
        folders, seconds = {}, {}
        began = time.perf_counter()
        profile = ExportProfile(image_sizes=((args.side, args.side),), max_batch=1)
        folders["fp32"] = export_model(load_model(str(checkpoint)), Path(tmp) / "fp32", profile, show_progress=False)
        seconds["fp32"] = time.perf_counter() - began
        began = time.perf_counter()
        fp16 = dataclasses.replace(profile, precision="fp16")
        folders["fp16"] = export_model(load_model(str(checkpoint)), Path(tmp) / "fp16", fp16, show_progress=False)
        seconds["fp16"] = time.perf_counter() - began
        for name, source, precision, smooth in (
            ("int8", "fp32", "int8", None),
            ("int8-sq", "fp32", "int8", SMOOTH),
            ("int4", "fp32", "int4", None),
            ("int4-fp16", "fp16", "int4", None),
        ):
            began = time.perf_counter()
            folders[name] = calibrate_export(
                folders[source], Path(tmp) / name, precision=precision, smooth=smooth, show_progress=False
            )
            seconds[name] = time.perf_counter() - began
        manifests = {name: ExportManifest.load(folder) for name, folder in folders.items()}
        prefill = manifests["fp32"].buckets[f"{args.side}x{args.side}"].prefill
        pipelines = {name: Pipeline(folder) for name, folder in folders.items()}
        prefill_ms = {name: [] for name in folders}
        decode_ms = {name: [] for name in folders}
        for repeat in range(args.repeats + 1):  # the first round warms up (session creation, first runs)
            for name, pipeline in pipelines.items():
                first, step = time_requests(pipeline, args.side, args.new_tokens)
                if repeat:
                    prefill_ms[name].append(first)
                    decode_ms[name].append(step)
        weights = {name: linear_weight_bytes(folder, prefill) for name, folder in folders.items()}
        sizes = {name: folder_bytes(folder) for name, folder in folders.items()}
        plans = {name: plan_memory(folder, PLAN_TARGET) for name, folder in folders.items()}
    print(
        f"Qwen2-VL-2B widths, {args.layers} decoder layers, {args.vision_blocks} encoder blocks, one {args.side}x"
        f"{args.side} image, {args.new_tokens} new tokens, median of {args.repeats}"
    )
    print(
        f"{'export':9} {'made in':>8} {'export MiB':>11} {'LLM linear MiB':>15} {'plan weights MiB':>17} "
        f"{'plan total MiB':>15} {'prefill ms':>11} {'decode ms':>10}   (plan: {PLAN_TARGET})"
    )
    for name in folders:
        agreement = manifests[name].quantization.agreement_with_fp32 if manifests[name].quantization else {}
        cosine = f"  logits cosine vs its source {agreement['logits_cosine_min']:.4f}" if agreement else ""
        print(
            f"{name:9} {seconds[name]:7.0f}s {sizes[name] / MiB:11.1f} {weights[name][0] / MiB:15.1f} "
            f"{plans[name].weight_bytes / MiB:17.1f} {plans[name].total_bytes / MiB:15.1f} "
            f"{statistics.median(prefill_ms[name]):11.1f} {statistics.median(decode_ms[name]):10.2f}{cosine}"
        )
    fp32_prefill, int8_prefill = (statistics.median(prefill_ms[name]) for name in ("fp32", "int8"))
    int4_stored, fp16_bytes = weights["int4"]
    print(f"int4_decode_speedup={statistics.median(decode_ms['fp32']) / statistics.median(decode_ms['int4']):.2f}")
    print(f"int4_plan_weight_ratio={plans['int4-fp16'].weight_bytes / plans['fp16'].weight_bytes:.3f}")
    print(f"int8_prefill_speedup={fp32_prefill / int8_prefill:.2f}")
    print(f"int8_decode_speedup={statistics.median(decode_ms['fp32']) / statistics.median(decode_ms['int8']):.2f}")
    smoothed = statistics.median(decode_ms["int8-sq"])
    print(f"int8_smooth_decode_speedup={statistics.median(decode_ms['fp32']) / smoothed:.2f}")
    print(f"int4_weight_ratio={int4_stored / fp16_bytes:.3f}")


if __name__ == "__main__":
    main()
