"""What the benchmarks share: their command line, ``luvc-export`` in a child process, and the peak memory that only
importing the exporter costs (the allowance memory targets leave out). Scripts import it as ``common`` (Python puts a
script's own folder first on the path)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


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
