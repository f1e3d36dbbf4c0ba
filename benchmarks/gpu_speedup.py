"""LUVC against the uncompressed model on a GPU: vision, LLM prefill, time to first token and decode speed, in
PyTorch (eager, and the LLM prefill compiled with CUDA graphs), ONNX Runtime (CUDA EP, plain and replayed as CUDA
graphs) and TensorRT, beside the cost model.

Model: a random-weight checkpoint with Qwen2-VL-2B's widths (``luvc.models.tiny.save_random_qwen2_vl``) and
``--layers`` decoder layers (28, the real depth) and ``--vision-blocks`` encoder blocks (32), fp16, one
``--image-size`` square bucket (448) and a prompt of 64 text tokens; ``--new-tokens`` tokens per request (32). For each
of LUVC (the defaults) and ``--no-luvc``: PyTorch runs the patched model on the GPU at batch 1, eager and (``--compile
1``) with its LLM prefill compiled (``mode="reduce-overhead"``); the export (``--precision fp16``, ``--max-batch``
``--batch``) runs in ONNX Runtime when ``onnxruntime-gpu`` is installed, at batch 1 and ``--batch`` (8), each plain
(``--cuda-graphs off``) and replayed (``on``), and, when a TensorRT module is, as engines built for this GPU
(``--target`` picked from its compute capability). Each figure is the median of ``--repeats`` requests after one
warm-up (for a replayed pipeline, the warm-up captures). A backend that is missing is named and skipped. Rows are
printed as they are measured (``--json PATH`` also writes them there after each). Decode tokens/s are per row.
Last lines: ``ort_replay_prefill_speedup_b1=``, ``ort_replay_ttft_speedup_b1=``, ``ort_replay_prefill_speedup_bN=``
(LUVC over uncompressed, both replayed), ``torch_compiled_ttft_speedup=`` and ``gpu_ttft_speedup=<x>``, uncompressed
over LUVC time to first token on the fastest backend measured at batch 1.

Without a CUDA device it prints why and exits 0 (nothing to measure). Usage:
    python benchmarks/gpu_speedup.py [--layers 28] [--vision-blocks 32] [--repeats 5] [--batch 8] [--compile 1]
        [--exports 1]   (--exports 0: the PyTorch rows only)
"""

from __future__ import annotations

import json
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


def pipeline_row(pipeline, image, prompt: str, new_tokens: int, repeats: int, batch: int = 1) -> dict[str, float]:
    """Median stage times of ``repeats`` requests of ``batch`` rows through a runtime ``Pipeline`` (after one
    warm-up)."""
    from luvc.runtime.pipeline import GenerationOptions

    options = GenerationOptions(new_tokens, stop_token_ids=())
    images, prompts = [image] * batch, [prompt] * batch
    pipeline.generate(images, prompts, options)
    rows = []
    for _ in range(repeats):  # each request prepares its batch again: its time to first token counts that
        timings = pipeline.generate(images, prompts, options).timings
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
    checkpoint: Path | str,
    luvc: bool,
    image,
    prompt: str,
    new_tokens: int,
    repeats: int,
    device: str = "cuda",
    compiled: bool = False,
) -> dict[str, float]:
    """Median stage times of the patched PyTorch model (``checkpoint``: a folder or a built-in model) on ``device``,
    fp16 on a GPU and fp32 on the CPU: vision and LLM prefill are the encoder's and the language model's first calls
    within one first-token request, each timed between device synchronisations. ``compiled``: the LLM prefill compiled
    (``VLMAdapter.compile_llm``, CUDA graphs on a GPU); the warm-up request compiles it."""
    from luvc import LUVCConfig
    from luvc.models import load_model
    from luvc.models.generation import greedy_generate

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    adapter = load_model(str(checkpoint))
    adapter.apply_luvc(LUVCConfig() if luvc else LUVCConfig.off())
    adapter.model.to(device, dtype)
    if compiled:
        adapter.compile_llm(cuda_graphs=device.startswith("cuda"))
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


class Results:
    """Rows by (backend, batch, luvc or uncompressed), printed as they come and written to ``json_path``."""

    def __init__(self, json_path: str | None) -> None:
        self.rows: dict[tuple[str, int, str], dict[str, float]] = {}
        self.json_path = json_path

    def add(self, backend: str, batch: int, name: str, row: dict[str, float]) -> None:
        self.rows[(backend, batch, name)] = row
        print(f"row {backend} b{batch} {name}: " + ", ".join(f"{k}={v:.2f}" for k, v in row.items()), flush=True)
        if self.json_path:
            listed = [{"backend": b, "batch": n, "model": m, **row} for (b, n, m), row in self.rows.items()]
            Path(self.json_path).write_text(json.dumps(listed, indent=1))

    def speedup(self, backend: str, batch: int, stage: str) -> float | None:
        luvc, base = self.rows.get((backend, batch, "luvc")), self.rows.get((backend, batch, "uncompressed"))
        if luvc is None or base is None:
            return None
        return luvc[stage] / base[stage] if stage.endswith("per_s") else base[stage] / luvc[stage]


def main() -> int:
    parser = arguments(
        __doc__, layers=28, vision_blocks=32, image_size=448, new_tokens=32, repeats=5, batch=8, compile=1, exports=1
    )
    parser.add_argument("--json", default=None, help="also write the rows to this file, after each")
    args = parser.parse_args()
    reason = cuda_missing()
    if reason is not None:
        print(f"gpu_speedup: nothing measured: {reason}. Run it on a machine with an NVIDIA GPU.")
        return 0

    from luvc.images import synthetic_image
    from luvc.models.tiny import save_random_qwen2_vl

    side, image, prompt = args.image_size, synthetic_image(args.image_size, args.image_size, 0), "x" * 48
    results, skipped, costs = Results(args.json), [], {}
    print(
        f"Qwen2-VL-2B widths, {args.layers} layers, {args.vision_blocks} encoder blocks, fp16, {side}x{side} image, "
        f"{torch.cuda.get_device_name()}; median of {args.repeats}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="luvc-gpu-speedup-") as tmp:
        checkpoint = Path(tmp) / "checkpoint"
        save_random_qwen2_vl(checkpoint, args.layers, args.vision_blocks, torch.float16, (side, side))
        # the exports' rows first, then PyTorch's; a backend that fails is named and the others still run
        for name, luvc in (("luvc", True), ("uncompressed", False))[: 2 * bool(args.exports)]:
            export = Path(tmp) / f"export-{name}"
            flags = [] if luvc else ["--no-luvc"]
            seconds = luvc_export(
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
                str(args.batch),
                *flags,
            )
            print(f"exported {name} in {seconds:.1f} s", flush=True)
            attempt(
                skipped,
                f"exports ({name})",
                backend_rows,
                export,
                Path(tmp) / f"engines-{name}",
                name,
                image,
                prompt,
                args,
                skipped,
                results,
            )
        for compiled in (False, True)[: 1 + bool(args.compile)]:
            for name, luvc in (("luvc", True), ("uncompressed", False)):
                label = "pytorch-compiled" if compiled else "pytorch"
                row = attempt(
                    skipped,
                    f"{label} ({name})",
                    torch_row,
                    checkpoint,
                    luvc,
                    image,
                    prompt,
                    args.new_tokens,
                    args.repeats,
                    compiled=compiled,
                )
                if row is not None:
                    costs[name] = row.pop("cost_model_llm_prefill_speedup")
                    results.add(label, 1, name, row)
    for line in skipped:
        print(f"skipped: {line}")
    print(f"{'backend':<18} {'batch':>5} {'stage':<22} {'uncompressed':>13} {'LUVC':>10} {'speedup':>8}")
    for backend, batch in dict.fromkeys(key[:2] for key in results.rows):
        for stage in STAGES:
            ratio = results.speedup(backend, batch, stage)
            if ratio is not None:
                base, ours = (
                    results.rows[(backend, batch, "uncompressed")][stage],
                    results.rows[(backend, batch, "luvc")][stage],
                )
                print(f"{backend:<18} {batch:>5} {stage:<22} {base:>13.2f} {ours:>10.2f} {ratio:>7.2f}x")
    if "luvc" in costs:
        print(f"cost model: LLM prefill {costs['luvc']:.2f}x")
    for label, (backend, batch, stage) in {
        "ort_replay_prefill_speedup_b1": ("ort-cuda-replayed", 1, "prefill_ms"),
        "ort_replay_ttft_speedup_b1": ("ort-cuda-replayed", 1, "ttft_ms"),
        f"ort_replay_prefill_speedup_b{args.batch}": ("ort-cuda-replayed", args.batch, "prefill_ms"),
        "torch_compiled_ttft_speedup": ("pytorch-compiled", 1, "ttft_ms"),
    }.items():
        ratio = results.speedup(backend, batch, stage)
        if ratio is not None:
            print(f"{label}={ratio:.2f}")
    single = [key[0] for key in results.rows if key[1:] == (1, "luvc") and results.speedup(key[0], 1, "ttft_ms")]
    if single:
        fastest = min(single, key=lambda backend: results.rows[(backend, 1, "luvc")]["ttft_ms"])
        print(f"gpu_ttft_speedup={results.speedup(fastest, 1, 'ttft_ms'):.2f}")
    return 0


def attempt(skipped: list[str], what: str, function, *args, **kwargs):
    """``function(*args, **kwargs)``, or ``None`` with the error in ``skipped`` (the other rows still run)."""
    try:
        return function(*args, **kwargs)
    except Exception as error:  # a benchmark reports a failing backend and goes on
        print(f"failed: {what}: {type(error).__name__}: {str(error)[:300]}", flush=True)
        skipped.append(f"{what}: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}")
        return None


def backend_rows(
    export: Path, engines: Path, name: str, image, prompt: str, args, skipped: list[str], results: Results
) -> None:
    """ONNX Runtime CUDA rows (batch 1 and ``args.batch``, plain and replayed) and TensorRT rows for one export, each
    skipped with its reason when unavailable."""
    from luvc.runtime.pipeline import Pipeline

    try:
        import onnxruntime

        has_cuda_ep = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        has_cuda_ep = False
    if has_cuda_ep:
        for mode, label in (("off", "ort-cuda"), ("on", "ort-cuda-replayed")):
            pipeline = Pipeline(export, device="cuda:0", cuda_graphs=mode)
            for batch in dict.fromkeys((1, args.batch)):
                row = pipeline_row(pipeline, image, prompt, args.new_tokens, args.repeats, batch)
                results.add(label, batch, name, row)
            if mode == "on":
                print(f"{label} {name}: {pipeline.sessions.replay_summary()}", flush=True)
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
        return
    if target is None:
        if name == "luvc":
            skipped.append(f"TensorRT: no target preset for SM {torch.cuda.get_device_capability()}")
        return
    luvc_export("build", str(export), "--target", target.name, "--out", str(engines))
    for mode, label in (("off", "tensorrt"), ("on", "tensorrt-replayed")):
        pipeline = Pipeline(export, backend="trt", engines_dir=engines, cuda_graphs=mode)
        results.add(label, 1, name, pipeline_row(pipeline, image, prompt, args.new_tokens, args.repeats))
        pipeline.release()


if __name__ == "__main__":
    sys.exit(main())
