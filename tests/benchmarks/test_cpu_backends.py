"""``benchmarks/cpu_backends.py``: the restart that its warm start is measured on, in a fresh process."""

import json
import os
import subprocess
import sys

import pytest

from tests.benchmarks import BENCHMARKS


@pytest.mark.slow  # a fresh interpreter importing torch and loading an export's sessions
def test_a_restart_process_loads_the_export_as_run_does_and_reports_its_start(exports, tmp_path):
    folder = exports("tiny-qwen2-vl", "fp32")
    environment = {**os.environ, "LUVC_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, str(BENCHMARKS / "cpu_backends.py"), "--restart", str(folder), "ort", "224", "2"]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(found) == ["ready_seconds"]
    assert 0 < found["ready_seconds"] < 300  # seconds since the process started, not since the pipeline's
