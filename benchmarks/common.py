"""What the benchmarks share: their command line, ``luvc-export`` in a child process, the peak memory that only
importing the exporter costs (the allowance memory targets leave out) and the memory of a process with its workers.
Scripts import it as ``common`` (Python puts a script's own folder first on the path)."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

# the request cpu_decode.py and cpu_backends.py time (cpu_backends' measuring processes import no torch before their
# graphs begin opening, as `run` does: the prompt is here, not in cpu_decode, which imports torch)
PROMPT = "Describe the image in detail please."


def arguments(doc: str | None, **defaults: int) -> argparse.ArgumentParser:
    """The benchmark's parser: ``doc`` as its description and an integer ``--name`` per default (``vision_blocks``
    becomes ``--vision-blocks``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default, help=f"(default {default})")
    return parser


def luvc_export(*args: str) -> float:
    """Run ``luvc-export args`` in a child process, its output hidden; the seconds it took (exits if it fails)."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "luvc.cli.main", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def import_allowance() -> int:
    """Peak RSS in bytes of a process that only imports what ``export`` imports (Python, PyTorch, transformers,
    ONNX, ONNX Runtime)."""
    code = "import luvc.cli.export, luvc.export.exporter, luvc.models, transformers, onnxruntime"
    process = subprocess.Popen([sys.executable, "-c", code])
    return os.wait4(process.pid, 0)[2].ru_maxrss * 1024


def optimized_node_count(path: Path) -> int:
    """Nodes of the graph at ``path`` after ONNX Runtime's optimisation (``luvc.export.inspect.ort_optimized``)."""
    from luvc.export.inspect import ort_optimized

    return len(ort_optimized(path).graph.node)


class TreeMemory:
    """The peak over time of the summed proportional set size (PSS: each shared page split among the processes that
    map it) of process ``pid`` and its descendants, sampled in a thread every ``interval`` seconds while it runs: the
    memory an export and its graph workers take together (their RSS would count the weights they share once each).
    Linux only (``/proc``); elsewhere ``peak`` stays 0."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.peak = 0
        self._pid, self._interval, self._stop = pid, interval, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        """Stop sampling; the peak in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, sum(_pss(pid) for pid in _tree(self._pid)))


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (read from ``/proc``)."""
    found = [pid]
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [child for text in children.read_text().split() for child in _tree(int(text))]
        except OSError:
            continue
    return found


def _pss(pid: int) -> int:
    """Bytes of ``pid``'s proportional set size; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return next((int(line.split()[1]) * 1024 for line in rollup if line.startswith("Pss:")), 0)
    except OSError:
        return 0


BF16_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_fp16", "avx512f", "avx2")


def cpu_description() -> str:
    """The CPU's model name and the features that decide the kernels (``/proc/cpuinfo``)."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
            elif line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
    except OSError:
        pass
    features = [flag for flag in BF16_FLAGS if flag in flags]
    return f"{model}, {os.cpu_count()} logical cores; features: {', '.join(features) or 'none of ' + str(BF16_FLAGS)}"
