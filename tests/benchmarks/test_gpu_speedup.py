"""``benchmarks/gpu_speedup.py`` on a machine without a GPU: it says why nothing was measured and exits 0."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_speedup.py"


def test_without_cuda_it_names_the_reason_and_exits_0():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the benchmark measures instead")
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "gpu_speedup: nothing measured: no CUDA device is visible to PyTorch (torch.cuda.is_available() is False). "
        "Run it on a machine with an NVIDIA GPU."
    )
    assert "gpu_ttft_speedup=" not in done.stdout  # no figure that was not measured
