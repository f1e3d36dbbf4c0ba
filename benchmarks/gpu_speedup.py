"""LUVC against the uncompressed model on a GPU: vision, LLM prefill, time to first token and decode speed, in
PyTorch, ONNX Runtime (CUDA EP) and TensorRT, beside the cost model.

Model: a random-weight checkpoint with Qwen2-VL-2B's widths (``luvc.models.tiny.save_random_qwen2_vl``) and
``--layers`` decoder layers (28, the real depth) and ``--vision-blocks`` encoder blocks (32), fp16, one
``--image-size`` square bucket (448) and a prompt of 64 text tokens; ``--new-tokens`` tokens per request (32). For each
of LUVC (the defaults) and ``--no-luvc``: PyTorch runs the patched model on the GPU; the export (``--precision fp16``)
runs in ONNX Runtime when ``onnxruntime-gpu`` is installed and, when a TensorRT module is, as engines built for this
GPU (``--target`` picked from its compute capability). Each figure is the median of ``--repeats`` requests after one
warm-up. A backend that is missing is named and skipped. Last line: ``gpu_ttft_speedup=<x>``, uncompressed over LUVC
time to first token on the fastest backend measured.

Without a CUDA device it prints why and exits 0 (nothing to measure). Usage:
    python benchmarks/gpu_speedup.py [--layers 28] [--vision-blocks 32] [--repeats 5]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import arguments, luvc_export

STAGES = ("vision_ms", "prefill_ms", "ttft_ms", "decode_tokens_per_s")


def cuda_missing() -> str | None:
    """Why nothing can be measured here, or ``None`` when a CUDA device is present."""
    if not torch.cuda.is_available():
        return "no CUDA device is visible to PyTorch (torch.cuda.is_available() is False)"
    return None


def median_row(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def pipeline_row(pipeline, image, prompt: str, new_tokens: int, repeats: int) -> dict[str, float]:
    """Median stage times of ``repeats`` requests through a runtime ``Pipeline`` (after one warm-up)."""
    from luvc.runtime.pipeline import GenerationOptions

    options = GenerationOptions(new_tokens, stop_token_ids=())
    pipeline.generate(image, prompt, options)
    rows = []
    for _ in range(repeats):
        timings = pipeline.generate(image, prompt, options).timings
        rows.append(
            dict(
                vision_ms=timings.vision_ms,
                prefill_ms=timings.prefill_ms,
                ttft_ms=timings.preprocess_ms + timings.first_token_ms,
                decode_tokens_per_s=timings.decode_tokens_per_second,
            )
        )
    return median_row(rows)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def torch_row(
    checkpoint: Path | str, luvc: bool, image, prompt: str, new_tokens: int, repeats: int, device: str = "cuda"
) -> dict[str, float]:
    """Median stage times of the patched PyTorch model (``checkpoint``: a folder or a built-in model) on ``device``,
    fp16 on a GPU and fp32 on the CPU: vision and LLM prefill are the encoder's and the language model's first calls
    within one first-token request, each timed between device synchronisations."""
    from luvc import LUVCConfig
    from luvc.models import load_model
    from luvc.models.generation import greedy_generate

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    adapter = load_model(str(checkpoint))
    adapter.apply_luvc(LUVCConfig() if luvc else LUVCConfig.off())
    adapter.model.to(device, dtype)
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in adapter.prepare_inputs([image], prompt).items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)

    spans: dict[str, list[float]] = {}  # module -> [start, end] of its first call in a request

    def clock(name: str, end: bool):
        def hook(*_) -> None:
            synchronize(device)
            spans.setdefault(name, [])
            if len(spans[name]) < 2 and (end or not spans[name]):
                spans[name].append(time.perf_counter())

        return hook

    modules = {"vision": adapter.model.model.visual, "prefill": adapter.language_model, "step": adapter.model}
    hooks = []
    for name, module in modules.items():
        hooks += [module.register_forward_pre_hook(clock(name, False)), module.register_forward_hook(clock(name, True))]

    def request() -> dict[str, float]:
        """One request's stage times: vision and prefill within its first step, its first token, its decode."""
        spans.clear()
        synchronize(device)
        began = time.perf_counter()
        with torch.no_grad():
            greedy_generate(adapter.model, inputs, new_tokens)
        synchronize(device)
        ended = time.perf_counter()
        first = spans["step"][1]
        return dict(
            vision_ms=(spans["vision"][1] - spans["vision"][0]) * 1e3,
            prefill_ms=(spans["prefill"][1] - spans["prefill"][0]) * 1e3,
            ttft_ms=(first - began) * 1e3,
            decode_tokens_per_s=(new_tokens - 1) / (ended - first),
        )

    request()  # warm-up
    rows = [request() for _ in range(repeats)]
    for hook in hooks:
        hook.remove()
    cost = adapter.cost(adapter.prepare_inputs([image], prompt)).llm_prefill_speedup
    adapter.model.to("cpu")
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {**median_row(rows), "cost_model_llm_prefill_speedup": cost}


def main() -> int:
    parser = arguments(__doc__, layers=28, vision_blocks=32, image_size=448, new_tokens=32, repeats=5)
    args = parser.parse_args()
    reason = cuda_missing()
    if reason is not None:
        print(f"gpu_speedup: nothing measured: {reason}. Run it on a machine with an NVIDIA GPU.")
        return 0

    from luvc.images import synthetic_image
    from luvc.models.tiny import save_random_qwen2_vl

    side, image, prompt = args.image_size, synthetic_image(args.image_size, args.image_size, 0), "x" * 48
    results: dict[tuple[str, str], dict[str, float]] = {}
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="luvc-gpu-speedup-") as tmp:
        checkpoint = Path(tmp) / "checkpoint"
        save_random_qwen2_vl(checkpoint, args.layers, args.vision_blocks, torch.float16, (side, side))
        for name, luvc in (("luvc", True), ("uncompressed", False)):
            results[("pytorch", name)] = torch_row(checkpoint, luvc, image, prompt, args.new_tokens, args.repeats)
            export = Path(tmp) / f"export-{name}"
            flags = [] if luvc else ["--no-luvc"]
            luvc_export(
                "export",
                "--model",
                str(checkpoint),
                "--out",
                str(export),
                "--precision",
                "fp16",
                "--image-size",
                f"{side}x{side}",
                "--max-batch",
                "1",
                *flags,
            )
            results.update(backend_rows(export, Path(tmp) / f"engines-{name}", name, image, prompt, args, skipped))
    print(
        f"Qwen2-VL-2B widths, {args.layers} layers, {args.vision_blocks} encoder blocks, fp16, {side}x{side} image, "
        f"{torch.cuda.get_device_name()}; median of {args.repeats}"
    )
    for line in skipped:
        print(f"skipped: {line}")
    print(f"{'backend':<10} {'stage':<22} {'uncompressed':>13} {'LUVC':>10} {'speedup':>8}")
    for backend in dict.fromkeys(key[0] for key in results):
        luvc_row, base = results[(backend, "luvc")], results[(backend, "uncompressed")]
        for stage in STAGES:
            ratio = luvc_row[stage] / base[stage] if stage.endswith("per_s") else base[stage] / luvc_row[stage]
            print(f"{backend:<10} {stage:<22} {base[stage]:>13.2f} {luvc_row[stage]:>10.2f} {ratio:>7.2f}x")
    print(f"cost model: LLM prefill {results[('pytorch', 'luvc')]['cost_model_llm_prefill_speedup']:.2f}x")
    fastest = min(dict.fromkeys(key[0] for key in results), key=lambda b: results[(b, "luvc")]["ttft_ms"])
    speedup = results[(fastest, "uncompressed")]["ttft_ms"] / results[(fastest, "luvc")]["ttft_ms"]
    print(f"gpu_ttft_speedup={speedup:.2f}")
    return 0


def backend_rows(export: Path, engines: Path, name: str, image, prompt: str, args, skipped: list[str]) -> dict:
    """ONNX Runtime CUDA and TensorRT rows for one export, each skipped with its reason when unavailable."""
    from luvc.runtime.pipeline import Pipeline

    rows = {}
    try:
        import onnxruntime

        has_cuda_ep = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        has_cuda_ep = False
    if has_cuda_ep:
        pipeline = Pipeline(export, device="cuda:0")
        rows[("ort-cuda", name)] = pipeline_row(pipeline, image, prompt, args.new_tokens, args.repeats)
        pipeline.release()
    elif name == "luvc":
        skipped.append("ONNX Runtime CUDA: onnxruntime-gpu is not installed")
    from luvc.engines.targets import target_for_capability

    target = target_for_capability(torch.cuda.get_device_capability())
    try:
        from luvc.engines.trt_module import import_tensorrt

        import_tensorrt()
    except Exception as error:  # LuvcError when neither TensorRT module is installed
        if name == "luvc":
            skipped.append(f"TensorRT: {error}")
        return rows
    if target is None:
        if name == "luvc":
            skipped.append(f"TensorRT: no target preset for SM {torch.cuda.get_device_capability()}")
        return rows
    luvc_export("build", str(export), "--target", target.name, "--out", str(engines))
    pipeline = Pipeline(export, backend="trt", engines_dir=engines)
    rows[("tensorrt", name)] = pipeline_row(pipeline, image, prompt, args.new_tokens, args.repeats)
    pipeline.release()
    return rows


if __name__ == "__main__":
    sys.exit(main())
