"""Every benchmark the docs name starts: each script's imports resolve against this package (a script is run by hand,
so a name moved inside ``luvc`` broke ``benchmarks/decode_step.py`` at its first line without any test noticing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_every_benchmark_script_imports():
    scripts = sorted(path.stem for path in BENCHMARKS.glob("*.py"))
    assert len(scripts) > 10
    # one process for all: each module is imported (``__main__`` guards keep their work from running)
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run(
        [sys.executable, "-c", code, *scripts], cwd=BENCHMARKS, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
