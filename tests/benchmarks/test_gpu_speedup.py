"""``benchmarks/gpu_speedup.py`` on a machine without a GPU: it says why nothing was measured and exits 0."""

import subprocess
import sys

import pytest
import torch

from tests.benchmarks import BENCHMARKS, benchmark_module

SCRIPT = BENCHMARKS / "gpu_speedup.py"


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


@pytest.mark.parametrize("luvc", [True, False])
def test_the_pytorch_row_measures_a_tiny_model_on_the_cpu(luvc):
    """The PyTorch row's code path on the CPU, so that it cannot rot between GPU runs."""
    benchmark = _benchmark()
    from luvc.images import synthetic_image

    row = benchmark.torch_row(
        "tiny-qwen2-vl", luvc, synthetic_image(224, 224), "Describe the image.", 3, 2, device="cpu"
    )
    assert set(benchmark.STAGES) <= set(row)
    assert all(row[stage] > 0 for stage in benchmark.STAGES)
    assert row["ttft_ms"] >= row["vision_ms"] + row["prefill_ms"]  # both run within the first step
    assert (row["cost_model_llm_prefill_speedup"] > 1.0) == luvc


def _benchmark():
    return benchmark_module("gpu_speedup")


@pytest.mark.slow
def test_the_pipeline_rows_and_their_ratios_on_the_cpu(exports, capsys, tmp_path):
    """The ONNX Runtime rows' code path (a batch, the printed row, the JSON file, the ratio) on the CPU, and the
    compiled PyTorch row's."""
    from luvc.images import synthetic_image
    from luvc.runtime.pipeline import Pipeline

    benchmark = _benchmark()
    results = benchmark.Results(str(tmp_path / "rows.json"))
    image = synthetic_image(224, 224)
    pipeline = Pipeline(exports("tiny-qwen2-vl"))
    for name in ("luvc", "uncompressed"):
        results.add("ort-cpu", 2, name, benchmark.pipeline_row(pipeline, image, "Describe the image.", 3, 2, batch=2))
    assert "row ort-cpu b2 luvc: vision_ms=" in capsys.readouterr().out
    written = __import__("json").loads((tmp_path / "rows.json").read_text())
    assert [(row["backend"], row["batch"], row["model"]) for row in written] == [
        ("ort-cpu", 2, "luvc"),
        ("ort-cpu", 2, "uncompressed"),
    ]
    luvc, base = written[0]["prefill_ms"], written[1]["prefill_ms"]
    assert results.speedup("ort-cpu", 2, "prefill_ms") == pytest.approx(base / luvc)
    assert results.speedup("ort-cpu", 1, "prefill_ms") is None
    compiled = benchmark.torch_row(
        "tiny-qwen2-vl", True, image, "Describe the image.", 3, 2, device="cpu", compiled=True
    )
    assert all(compiled[stage] > 0 for stage in benchmark.STAGES)
