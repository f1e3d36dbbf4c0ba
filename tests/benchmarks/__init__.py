"""Tests of the scripts in ``benchmarks/``: their code paths on the CPU, on tiny models."""

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def benchmark_module(name: str) -> ModuleType:
    """The script ``benchmarks/NAME.py`` imported as a module (the folder is on ``sys.path`` only while it loads)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))
