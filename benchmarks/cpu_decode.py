"""Decode on ONNX Runtime's CPU provider against the machine's memory bandwidth, by precision, and start-up time.

Builds a random-weight checkpoint at Qwen2-VL-2B's widths (``--layers`` decoder layers, ``--vision-blocks`` encoder
blocks; fp16 weights), exports it in fp32 and fp16 (one ``--side`` square bucket, batches up to 4) and makes the
weight-only INT8 (``int8w``) and INT4 (round to nearest) exports of the fp16 one with ``luvc-export calibrate``. Then:

- **read bandwidth**: the median over 7 reductions of a 1 GiB float32 array, on as many threads as ONNX Runtime's
  sessions use (one a physical core), measured by each measuring process just before its decode steps (a shared
  machine's bandwidth drifts: 35 to 57 GB/s within an hour on the 2-core machine these figures come from): what a
  decode step could read per second there and then;
- **decode**: per export, per batch (1 and 4), the median milliseconds a greedy decode step takes over
  ``--new-tokens`` tokens (one synthetic image per row), in fresh processes taking turns for ``--rounds`` rounds so
  the machine's drift cancels; with the prefill and vision times of the same requests (neither may get slower);
- **where a step goes** (fp16 export, batch 1): one decode step replayed on its own profiled ONNX Runtime session (the
  pipeline's rewritten graph and shared weights, fed what the pipeline fed it), its kernel time by part (the
  decoder layers' products, the LM head, attention, the KV-cache update, the rest), and the pipeline's own time
  between session runs (sampling, feeds); the same step with spinning intra-op threads and with prepacked weights,
  the two settings the pipeline leaves off;
- **start-up**: seconds from a fresh process's start to its sessions loaded, with an empty cache folder (cold:
  hashing every file and converting the fp16 weights) and again with the cache the first start left (warm;
  ``luvc.cache``). The export's files are in the page cache both times.

The weight bytes a step reads are those its session holds for the decode graph's products and LM head (an fp16
export's converted to float32, as the CPU runs it; INT4 packed; the embedding table, only looked up, not counted).
Last lines: ``decode_bandwidth_fraction=`` (fp16 export, batch 1: bytes per step / step time / read bandwidth;
target >= 0.70), ``int8w_decode_speedup=`` and ``int4_decode_speedup=`` (fp32 step / that export's step, batch 1;
targets >= 1.6 and >= 2.5), ``load_seconds_cold=`` and ``load_seconds_warm=`` (fp16 export, process start to
sessions loaded; warm target <= 4). Usage:
    python benchmarks/cpu_decode.py [--layers 8] [--vision-blocks 8] [--side 448] [--new-tokens 24] [--rounds 2]
        [--workdir DIR]   (keeps the checkpoint and exports there for the next run)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import onnx
import torch
from common import PROMPT, arguments

GiB = 1 << 30
PRECISIONS = ("fp32", "fp16", "int8w", "int4")  # fp32 first: the speedups' baseline
BATCHES = (1, 4)
PRODUCTS = {"MatMul", "MatMulNBits", "Gemm", "FusedMatMul", "MatMulInteger", "DynamicQuantizeMatMul"}
KV_UPDATES = {"TensorScatter", "ScatterND", "ScatterElements"}
ATTENTION_OPS = {"Softmax", "GroupQueryAttention", "MultiHeadAttention", "Attention"}


def read_bandwidth(threads: int, repeats: int = 7) -> float:
    """Bytes a second a reduction of a 1 GiB float32 array reads on ``threads`` threads (the median of
    ``repeats``)."""
    torch.set_num_threads(threads)
    array = torch.ones(GiB // 4, dtype=torch.float32)
    array.sum()  # paged in
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        array.sum()
        seconds.append(time.perf_counter() - began)
    return array.nbytes / statistics.median(seconds)


def step_weight_bytes(folder: Path, float32: bool) -> int:
    """Bytes of the weights one decode step of the export in ``folder`` reads: every initializer of the decode graph
    but those only looked up (Gather tables), float16 ones counted as float32 where the CPU converts them."""
    model = onnx.load(str(folder / "decode.onnx"), load_external_data=False)
    readers = defaultdict(set)
    for node in model.graph.node:
        for name in node.input:
            readers[name].add(node.op_type)
    total = 0
    for tensor in model.graph.initializer:
        if readers[tensor.name] <= {"Gather"}:
            continue
        count = 1
        for dim in tensor.dims:
            count *= dim
        bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(tensor.data_type)
        size = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize if bits is None else bits / 8
        if float32 and tensor.data_type == onnx.TensorProto.FLOAT16:
            size = 4
        total += int(count * size)
    return total


def make_exports(workdir: Path, layers: int, vision_blocks: int, side: int) -> dict[str, Path]:
    """The four exports under ``workdir``, made where missing (a finished one has its manifest)."""
    from luvc.calibration import calibrate_export
    from luvc.export.exporter import export_model
    from luvc.export.profile import ExportProfile
    from luvc.models import load_model
    from luvc.models.tiny import save_random_qwen2_vl

    checkpoint = workdir / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        save_random_qwen2_vl(checkpoint, layers, vision_blocks, torch.float16, (side, side))
    folders = {precision: workdir / precision for precision in PRECISIONS}
    for precision in ("fp32", "fp16"):
        if not (folders[precision] / "manifest.json").is_file():
            began = time.perf_counter()
            profile = ExportProfile(image_sizes=((side, side),), precision=precision, max_batch=max(BATCHES))
            export_model(load_model(str(checkpoint)), folders[precision], profile, overwrite=True, show_progress=False)
            print(f"exported {precision} in {time.perf_counter() - began:.0f} s", flush=True)
    for precision in ("int8w", "int4"):
        if not (folders[precision] / "manifest.json").is_file():
            began = time.perf_counter()
            calibrate_export(
                folders["fp16"], folders[precision], precision=precision, method="rtn", overwrite=True,
                show_progress=False,
            )  # fmt: skip
            print(f"calibrated {precision} in {time.perf_counter() - began:.0f} s", flush=True)
    return folders


def child(*args: str, cache: str) -> dict:
    """Run this script's ``--child`` mode in a fresh process (``LUVC_CACHE_DIR`` = ``cache``); what it printed last,
    as JSON."""
    environment = {**os.environ, "LUVC_CACHE_DIR": cache}
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], env=environment, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"cpu_decode: a measuring process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_requests(folder: str, side: int, new_tokens: int) -> dict:
    """In this process: start-up, then per batch the decode ms a step, prefill and vision ms of one request after a
    warm-up request."""
    from luvc.images import synthetic_image
    from luvc.runtime.pipeline import GenerationOptions, Pipeline
    from luvc.startup import seconds_since_start

    began = time.perf_counter()
    pipeline = Pipeline(folder)
    pipeline.begin_loading(pipeline.request_graphs(next(iter(pipeline.manifest.buckets.values()))))  # as run does
    prepared = pipeline.prepare([synthetic_image(side, side, 0)], [PROMPT])
    pipeline.load(prepared.bucket)
    found = {"load_seconds": time.perf_counter() - began, "ready_seconds": seconds_since_start()}
    options = GenerationOptions(new_tokens, stop_token_ids=())
    found["bandwidth"] = read_bandwidth(torch.get_num_threads())  # here and now: this machine's drifts
    for batch in BATCHES:
        images = [synthetic_image(side, side, seed) for seed in range(batch)]
        prepared = pipeline.prepare(images, [PROMPT] * batch)
        pipeline.generate(prepared, options=GenerationOptions(2, stop_token_ids=()))  # warm-up
        timings = pipeline.generate(prepared, options=options).timings
        found[f"batch{batch}"] = {
            "step_ms": timings.decode_ms / max(timings.new_tokens - 1, 1),
            "prefill_ms": timings.prefill_ms,
            "vision_ms": timings.vision_ms,
        }
    return found


def profile_step(folder: str, side: int, steps: int = 20) -> dict:
    """In this process: one decode step of the pipeline, replayed on a profiled session of its own; kernel ms by part,
    the pipeline's step and session times, and the step with spinning threads and with prepacked weights."""
    import onnxruntime as ort

    from luvc.images import synthetic_image
    from luvc.runtime.pipeline import GenerationOptions, Pipeline

    pipeline = Pipeline(folder)
    prepared = pipeline.prepare([synthetic_image(side, side, 0)], [PROMPT])
    pipeline.load(prepared.bucket)
    decode = pipeline.sessions.opened()["decode"]
    captured = {}
    plain_run = decode.infer_impl

    def capturing(feeds, outputs):  # the step's feeds and outputs (device tensors), then the step as it was
        captured.setdefault("io", (dict(feeds), dict(outputs)))
        began = time.perf_counter()
        plain_run(feeds, outputs)
        captured.setdefault("session_ms", []).append((time.perf_counter() - began) * 1e3)

    decode.infer_impl = capturing
    timings = pipeline.generate(prepared, options=GenerationOptions(steps + 1, stop_token_ids=())).timings
    pipeline_step_ms = timings.decode_ms / max(timings.new_tokens - 1, 1)
    feeds, outputs = captured["io"]
    graph = onnx.load(str(Path(folder) / "decode.onnx"), load_external_data=False)

    def session(spinning: bool = False, prepacking: bool = False, profile_to: str | None = None):
        """A session of the pipeline's decode graph and shared weights, bound to the captured step; and the shared
        values, which must outlive it."""
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        model, values = pipeline.sessions.weights.session_model(graph, options)
        if prepacking:  # overrides the pipeline's setting (ONNX Runtime warns that it does)
            options.add_session_config_entry("session.disable_prepacking", "0")
        if profile_to:
            options.enable_profiling = True
            options.profile_file_prefix = profile_to
        made = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        binding = made.io_binding()
        decode.bind(binding, feeds, outputs)
        made.run_with_iobinding(binding)  # the first run
        return made, binding, values

    with tempfile.TemporaryDirectory(prefix="luvc-profile-") as scratch:
        profiled, binding, values = session(profile_to=str(Path(scratch) / "decode"))
        for _ in range(steps):
            profiled.run_with_iobinding(binding)
        events = json.loads(Path(profiled.end_profiling()).read_text())
        del profiled, binding, values
    parts: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        node, op = event["name"].removesuffix("_kernel_time").lower(), event["args"].get("op_name", "")
        if "lm_head" in node:
            part = "LM head"
        elif op in PRODUCTS and "_proj" in node:  # q/k/v/o, gate/up/down: products by a weight
            part = "layer products"
        elif op in KV_UPDATES:
            part = "KV-cache update"
        elif "attn" in node or op in ATTENTION_OPS:
            part = "attention"
        else:
            part = "other"
        parts[part] += event["dur"] / 1e3 / (steps + 1)  # every run was profiled: ms a step
    # the pipeline's settings, and each setting it leaves off, taking turns (5 rounds of 10 steps each)
    variants = {"plain": session(), "spinning": session(spinning=True)}
    before = _resident_bytes()
    variants["prepacked"] = session(prepacking=True)
    prepacked_bytes = _resident_bytes() - before  # its own packed copy of every weight it prepacks
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(5):
        for name, (made, binding, _) in variants.items():
            for _ in range(10):
                began = time.perf_counter()
                made.run_with_iobinding(binding)
                times[name].append((time.perf_counter() - began) * 1e3)
    return {
        "parts_ms": dict(parts),
        "pipeline_step_ms": pipeline_step_ms,
        "pipeline_session_ms": statistics.median(captured["session_ms"]),
        **{f"{name}_step_ms": statistics.median(found) for name, found in times.items()},
        "prepacked_bytes": prepacked_bytes,
    }


def _resident_bytes() -> int:
    """This process's resident memory (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        mode, folder, side, tokens = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        found = measure_requests(folder, side, tokens) if mode == "requests" else profile_step(folder, side)
        print(json.dumps(found))
        return
    parser = arguments(__doc__, layers=8, vision_blocks=8, side=448, new_tokens=24, rounds=2)
    parser.add_argument(
        "--workdir", default=None, help="keep the checkpoint and exports here (default: a temporary one)"
    )
    args = parser.parse_args()
    threads = torch.get_num_threads()  # one a physical core, as ONNX Runtime's default intra-op threads
    import onnxruntime

    print(
        f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, {threads} threads, load average "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    # the exports live in the scratch folder (without --workdir) until the report below has read them
    scratch_folder = tempfile.TemporaryDirectory(prefix="luvc-cpu-decode-")
    try:
        report(args, scratch_folder.name)
    finally:
        scratch_folder.cleanup()


def report(args, scratch: str) -> None:
    """Make the exports (in ``--workdir``, else in ``scratch``), measure them in fresh processes, print the table."""
    workdir = Path(args.workdir or scratch)
    workdir.mkdir(parents=True, exist_ok=True)
    folders = make_exports(workdir, args.layers, args.vision_blocks, args.side)
    cache = str(Path(scratch) / "cache")
    cold = child("requests", str(folders["fp16"]), str(args.side), str(args.new_tokens), cache=cache)
    runs = defaultdict(list)
    for _ in range(args.rounds):
        for precision, folder in folders.items():
            runs[precision].append(child("requests", str(folder), str(args.side), str(args.new_tokens), cache=cache))
    profile = child("profile", str(folders["fp16"]), str(args.side), str(args.new_tokens), cache=cache)
    print(
        f"\nQwen2-VL-2B widths, {args.layers} decoder layers, {args.vision_blocks} encoder blocks, one {args.side}x"
        f"{args.side} image a row, {args.new_tokens} greedy tokens; medians of {args.rounds} rounds of fresh processes"
    )
    print(f"{'export':7} {'batch':>5} {'decode ms/step':>15} {'tokens/s':>9} {'GB/step':>8} {'of bandwidth':>13} "
          f"{'prefill ms':>11} {'vision ms':>10}")  # fmt: skip
    steps, fractions = {}, {}
    for precision, folder in folders.items():
        weight_bytes = step_weight_bytes(folder, float32=True)
        for batch in BATCHES:
            rows = [run[f"batch{batch}"] for run in runs[precision]]
            step = statistics.median(row["step_ms"] for row in rows)
            steps[precision, batch] = step
            # each process's step against the bandwidth it measured just before (it drifts on a shared machine)
            fraction = statistics.median(
                weight_bytes / (run[f"batch{batch}"]["step_ms"] / 1e3) / run["bandwidth"] for run in runs[precision]
            )
            fractions[precision, batch] = fraction
            print(
                f"{precision:7} {batch:5} {step:15.1f} {batch * 1e3 / step:9.1f} {weight_bytes / 1e9:8.2f} "
                f"{fraction:13.2f} {statistics.median(r['prefill_ms'] for r in rows):11.0f} "
                f"{statistics.median(r['vision_ms'] for r in rows):10.0f}"
            )
    print("\nOne fp16 decode step (batch 1), replayed on a profiled session of its own:")
    for part, ms in sorted(profile["parts_ms"].items(), key=lambda item: -item[1]):
        print(f"  {part:16} {ms:7.2f} ms")
    between = profile["pipeline_step_ms"] - profile["pipeline_session_ms"]
    print(
        f"  the pipeline between session runs (sampling, feeds): {between:.2f} ms of a "
        f"{profile['pipeline_step_ms']:.1f} ms step"
    )
    print(
        f"  the session alone {profile['plain_step_ms']:.1f} ms; with spinning threads "
        f"{profile['spinning_step_ms']:.1f} ms; with prepacked weights {profile['prepacked_step_ms']:.1f} ms "
        f"(+{profile['prepacked_bytes'] / GiB:.2f} GiB resident for that one session)"
    )
    warm = statistics.median(run["ready_seconds"] for run in runs["fp16"])
    warm_load = statistics.median(run["load_seconds"] for run in runs["fp16"])
    print(
        f"\nstart-up (fp16 export, process start to sessions loaded): cold {cold['ready_seconds']:.1f} s (loading "
        f"{cold['load_seconds']:.1f} s), warm {warm:.1f} s (loading {warm_load:.1f} s)"
    )
    bandwidths = [run["bandwidth"] / 1e9 for precision in folders for run in runs[precision]]
    print(f"read bandwidth measured by each process: {min(bandwidths):.1f} to {max(bandwidths):.1f} GB/s")
    print(f"decode_bandwidth_fraction={fractions['fp16', 1]:.2f}")
    print(f"int8w_decode_speedup={steps['fp32', 1] / steps['int8w', 1]:.2f}")
    print(f"int4_decode_speedup={steps['fp32', 1] / steps['int4', 1]:.2f}")
    print(f"load_seconds_cold={cold['ready_seconds']:.1f}")
    print(f"load_seconds_warm={warm:.1f}")


if __name__ == "__main__":
    main()
