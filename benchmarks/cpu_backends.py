"""OpenVINO against ONNX Runtime on the CPU, on the same exports: vision, LLM prefill, time to first token, decode,
memory and warm start-up, by precision.

Builds (or reuses, with ``--workdir``) a random-weight checkpoint at Qwen2-VL-2B's widths (``--layers`` decoder
layers, ``--vision-blocks`` encoder blocks), its fp32 and fp16 exports (one ``--side`` square bucket) and the
weight-only INT8 and INT4 exports of the fp16 one (``luvc-export calibrate --method rtn``), as
``benchmarks/cpu_decode.py`` does, and the INT8 (Q/DQ) export of the fp32 one (``luvc-export calibrate --precision
int8``). Then, in fresh processes taking turns for ``--rounds`` rounds (a shared machine
drifts), each backend on each export: the seconds from process start to the sessions loaded with a warm start-up
cache (a first process per export and backend fills it: ONNX Runtime's float32 conversions, OpenVINO's compiled
models), one image and prompt's vision, prefill (embed + LLM) and time to first token (preprocessing included) after a
warm-up request, greedy decode tokens/s at batch 1 over ``--new-tokens`` tokens, and the process's resident memory
after the request and at its peak (``RSS``, ``VmHWM``: what the sessions hold, file-backed pages of mapped weights and
cached models included). Then the same export and backend start once more, to the sessions loaded as ``run`` does
(tokenizer included): the **warm start**, a restart with the start-up cache and the operating system's page cache of
that export warm, as a service restarting its model sees it. The measuring process's own start follows the other
exports' processes, whose files and cache entries (over 20 GiB at the default sizes, about what this machine's memory
holds) may have pushed some of its pages out: the table shows it as "start after others".

Prints the CPU's model and its bf16 features with the table, and ends with ``openvino_vision_speedup=``,
``openvino_prefill_speedup=``, ``openvino_ttft_speedup=``, ``openvino_decode_speedup_fp16=`` (the fp16 export; ONNX
Runtime's time over OpenVINO's), ``openvino_decode_speedup_int8w=``, ``openvino_rss_ratio=`` (OpenVINO's peak RSS
over ONNX Runtime's, fp16 export) and ``load_seconds_warm_max=`` (the slowest warm start over every precision and both
backends: the restarts). Targets on a CPU with AMX or AVX-512 BF16 (issue 78): vision >= 3, prefill >= 2, time to
first token >= 2.5, decode >= 1.5 (fp16) and >= 1.0 (int8w), RSS ratio <= 1.2, warm start <= 4 s. Usage:
    python benchmarks/cpu_backends.py [--layers 8] [--vision-blocks 8] [--side 448] [--new-tokens 16] [--rounds 2]
        [--workdir DIR]   (keeps the checkpoint and exports there for the next run)
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import PROMPT, arguments, cpu_description

BACKENDS = ("ort", "openvino")
CACHE_GIB = 1000  # LUVC_CACHE_MAX_GB for the measuring processes
# the start-up cache the measuring processes fill, over the exports' weights files: 2.2 at the default sizes
# (2026-11-29: OpenVINO's compiled models and ONNX Runtime's float32 conversions). Where the disk cannot hold it the
# cache keeps nothing and every start compiles again (a run with 12 GiB free measured OpenVINO's warm starts at
# 4-11 s and its resident memory at 6.7 GiB): the run refuses to start instead
CACHE_PER_WEIGHT_BYTE = 2.5


def start(folder: str, backend: str, side: int):
    """In this process, as ``run`` does: the pipeline of ``folder`` on ``backend`` with its sessions loaded (their
    graphs begun before the runtime and torch are imported: ``GraphOpener.for_cpu_start``), one image and prompt
    prepared beside them, and the seconds since the process started."""
    from luvc.runtime.opening import GraphOpener, request_graphs

    opener = GraphOpener.for_cpu_start(folder, backend)
    opener.begin(request_graphs(opener.manifest, backend, next(iter(opener.manifest.buckets.values()))))
    from luvc.images import synthetic_image
    from luvc.runtime.pipeline import Pipeline
    from luvc.startup import seconds_since_start

    pipeline = Pipeline(folder, backend=backend, opener=opener)
    prepared = pipeline.prepare([synthetic_image(side, side, 0)], [PROMPT])
    pipeline.load(prepared.bucket)
    return pipeline, prepared, seconds_since_start()


def measure(folder: str, backend: str, side: int, new_tokens: int) -> dict:
    """In this process: start-up, then one request's stage times after a warm-up request, and resident memory."""
    from luvc.images import synthetic_image
    from luvc.runtime.pipeline import GenerationOptions

    pipeline, prepared, ready_seconds = start(folder, backend, side)
    found = {"start_after_others_seconds": ready_seconds}
    pipeline.generate(prepared, options=GenerationOptions(2, stop_token_ids=()))  # warm-up
    request = pipeline.prepare([synthetic_image(side, side, 1)], [PROMPT])
    timings = pipeline.generate(request, options=GenerationOptions(new_tokens, stop_token_ids=())).timings
    found.update(
        vision_ms=timings.vision_ms,
        prefill_ms=timings.prefill_ms,
        ttft_ms=request.preprocess_ms + timings.first_token_ms,
        decode_tokens_per_second=timings.decode_tokens_per_second,
        rss_bytes=int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE"),
        peak_rss_bytes=peak_resident_bytes(),
    )
    if backend == "openvino":
        found["openvino_precision"] = pipeline.sessions.backend_description()  # and graphs that compute otherwise
    return found


def peak_resident_bytes() -> int:
    """This process's peak resident memory so far (``VmHWM`` of ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM")


def child(folder: Path, backend: str, args, cache: str, restart: bool = False) -> dict:
    """``measure`` in a fresh process (``LUVC_CACHE_DIR`` = ``cache``), or with ``restart`` only its start (as
    ``{"ready_seconds": ...}``); what it printed last, as JSON."""
    mode = "--restart" if restart else "--child"
    command = [sys.executable, __file__, mode, str(folder), backend, str(args.side), str(args.new_tokens)]
    # the cache keeps every export's entries (19 GiB at the default sizes, 12 of them OpenVINO's compiled models: at
    # its default limit of 20, the 2026-11-28 run's warm starts found some removed for another export's and compiled
    # again)
    environment = {**os.environ, "LUVC_CACHE_DIR": cache, "LUVC_CACHE_MAX_GB": str(CACHE_GIB)}
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"cpu_backends: a measuring process failed ({backend}, {folder.name}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_int8_export(workdir: Path, fp32: Path) -> Path:
    """The INT8 (Q/DQ, calibrated activations) export of ``fp32`` under ``workdir``, made where missing."""
    from luvc.calibration import calibrate_export

    folder = workdir / "int8"
    if not (folder / "manifest.json").is_file():
        began = time.perf_counter()
        calibrate_export(fp32, folder, precision="int8", overwrite=True, show_progress=False)
        print(f"calibrated int8 in {time.perf_counter() - began:.0f} s", flush=True)
    return folder


def report(args, scratch: str) -> None:
    """Make the exports, fill the caches, measure every backend on every export in turns, print the table."""
    import torch

    workdir = Path(args.workdir or scratch)
    workdir.mkdir(parents=True, exist_ok=True)
    from cpu_decode import make_exports

    folders = make_exports(workdir, args.layers, args.vision_blocks, args.side)
    folders["int8"] = make_int8_export(workdir, folders["fp32"])
    cache = str(Path(scratch) / "cache")
    weights = sum(path.stat().st_size for folder in folders.values() for path in folder.glob("*.data"))
    needed, free = CACHE_PER_WEIGHT_BYTE * weights / 2**30, shutil.disk_usage(scratch).free / 2**30
    if free < needed:
        sys.exit(
            f"cpu_backends: the start-up cache needs about {needed:.0f} GiB beside the exports and {scratch} has "
            f"{free:.0f} GiB free; free space there (TMPDIR picks another disk)."
        )
    for precision, folder in folders.items():  # the first start of each fills the cache
        for backend in BACKENDS:
            began = time.perf_counter()
            child(folder, backend, args, cache)
            print(f"cold start and a request: {backend} {precision} {time.perf_counter() - began:.0f} s", flush=True)
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for _ in range(args.rounds):
        for precision, folder in folders.items():
            for backend in BACKENDS:
                found = child(folder, backend, args, cache)
                found.update(child(folder, backend, args, cache, restart=True))  # right after: its pages are warm
                runs[precision, backend].append(found)
    median = {key: {name: statistics.median(run[name] for run in found) for name in found[0] if name.endswith(("_ms",
              "_second", "_seconds", "_bytes"))} for key, found in runs.items()}  # fmt: skip
    print(
        f"\n{cpu_description()}; torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}\n"
        f"Qwen2-VL-2B widths, {args.layers} decoder layers, {args.vision_blocks} encoder blocks, one {args.side}x"
        f"{args.side} image, {args.new_tokens} greedy tokens, batch 1; medians of {args.rounds} rounds of fresh "
        f"processes; fp16 export: {runs['fp16', 'openvino'][0]['openvino_precision']}"
    )
    print(f"{'export':7} {'backend':9} {'warm start s':>12} {'start after others s':>20} {'vision ms':>10} "
          f"{'prefill ms':>11} {'TTFT ms':>8} {'decode tok/s':>13} {'RSS GiB':>8} {'peak GiB':>9}")  # fmt: skip
    for (precision, backend), row in median.items():
        print(
            f"{precision:7} {backend:9} {row['ready_seconds']:12.1f} {row['start_after_others_seconds']:20.1f} "
            f"{row['vision_ms']:10.0f} "
            f"{row['prefill_ms']:11.0f} {row['ttft_ms']:8.0f} {row['decode_tokens_per_second']:13.1f} "
            f"{row['rss_bytes'] / 2**30:8.2f} {row['peak_rss_bytes'] / 2**30:9.2f}"
        )
    ort, openvino = median["fp16", "ort"], median["fp16", "openvino"]
    print(f"openvino_vision_speedup={ort['vision_ms'] / openvino['vision_ms']:.2f}")
    print(f"openvino_prefill_speedup={ort['prefill_ms'] / openvino['prefill_ms']:.2f}")
    print(f"openvino_ttft_speedup={ort['ttft_ms'] / openvino['ttft_ms']:.2f}")
    for precision in ("fp16", "int8w"):
        speedup = median[precision, "openvino"]["decode_tokens_per_second"]
        speedup /= median[precision, "ort"]["decode_tokens_per_second"]
        print(f"openvino_decode_speedup_{precision}={speedup:.2f}")
    print(f"openvino_rss_ratio={openvino['peak_rss_bytes'] / ort['peak_rss_bytes']:.2f}")
    print(f"load_seconds_warm_max={max(row['ready_seconds'] for row in median.values()):.1f}")


def main() -> None:
    if sys.argv[1:2] in (["--child"], ["--restart"]):
        folder, backend, side, tokens = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        if sys.argv[1] == "--restart":
            print(json.dumps({"ready_seconds": start(folder, backend, side)[2]}))
        else:
            print(json.dumps(measure(folder, backend, side, tokens)))
        return
    parser = arguments(__doc__, layers=8, vision_blocks=8, side=448, new_tokens=16, rounds=2)
    parser.add_argument("--workdir", default=None, help="keep the checkpoint and exports here (default: temporary)")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="luvc-cpu-backends-")
    try:
        report(args, scratch.name)
    finally:
        scratch.cleanup()


if __name__ == "__main__":
    main()
