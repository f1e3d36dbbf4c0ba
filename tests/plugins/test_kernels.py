"""The CUDA kernels of the plugins against the PyTorch reference (``luvc.export.plugin_ops``, which runs
``luvc.compress``), through the library's C interface on CUDA tensors. Needs an NVIDIA GPU."""

import subprocess

import pytest
import torch

from luvc.compress.oim import plan_oim
from luvc.compress.spu import low_frequency_count
from luvc.export.plugin_ops import ortho_merge, spectrum_prune
from tests.plugins.conftest import HEADERS, LIBRARY, ROOT, cmake
from tests.plugins.harness import Fields, PluginLibrary

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the plugin kernels need an NVIDIA GPU with CUDA"),
]


@pytest.fixture(scope="module")
def library(tmp_path_factory, plugin_builds) -> PluginLibrary:
    """The library built for this machine's GPU."""
    build = tmp_path_factory.mktemp("plugins-native")
    configured = cmake(
        ROOT, build, f"-DTensorRT_INCLUDE_DIR={HEADERS / '11.1' / 'include'}", "-DCMAKE_CUDA_ARCHITECTURES=native"
    )
    assert configured.returncode == 0, configured.stderr
    subprocess.run(["cmake", "--build", str(build), "-j", "8"], check=True, capture_output=True)
    return PluginLibrary(build / LIBRARY)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("grid", "shape", "axis"), [((1, 16, 16), (256, 4, 64), 0), ((1, 24, 24), (2, 576, 96), 1)])
def test_ortho_merge_matches_pytorch(library, dtype, grid, shape, axis):
    (step,) = plan_oim([grid], ["W"])
    x = torch.randn(shape, device="cuda", dtype=dtype)
    values = [step.index_a.tolist(), step.index_b.tolist(), step.weight_a.tolist(), step.weight_b.tolist(), axis]
    expected = ortho_merge(x, *values)
    y = torch.empty_like(expected)
    fields = Fields(dict(zip(["index_a", "index_b", "weight_a", "weight_b", "axis"], values)))
    assert library.ortho_merge(fields, x, y) == 0, library.last_error
    if dtype == torch.float32:
        assert torch.equal(y, expected)
    else:  # PyTorch rounds each product to float16, the kernel only the result
        torch.testing.assert_close(y, expected, rtol=2e-3, atol=2e-3)


def _jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = set(a.flatten().tolist()), set(b.flatten().tolist())
    return len(a & b) / max(1, len(a | b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("variant", ["spectral-residual", "channel-spectrum"])
@pytest.mark.parametrize(
    ("counts", "budgets"),
    [((600,), (150,)), ((5000,), (4000,)), ((320, 200), (100, 0)), ((4100, 64), (3900, 64))],
)
def test_spectrum_prune_matches_pytorch(library, dtype, variant, counts, budgets):
    batch, width, rope, prefix, gap, tail = 2, 128, 32, 5, 3, 9
    starts, cursor = [], prefix
    for count in counts:
        starts.append(cursor)
        cursor += count + gap
    length = cursor + tail
    generator = torch.Generator(device="cuda").manual_seed(sum(counts))
    hidden = torch.randn(batch, length, width, device="cuda", generator=generator).to(dtype)
    cos = torch.randn(batch, length, rope, device="cuda", generator=generator).to(dtype)
    sin = torch.randn(batch, length, rope, device="cuda", generator=generator).to(dtype)
    visual_ids = torch.arange(1000, 1000 + sum(counts), device="cuda").expand(batch, -1).contiguous()
    low = [low_frequency_count(variant, 0.25, count, width) for count in counts]
    args = (list(starts), list(counts), list(budgets), variant, 0.25, low)
    expected = spectrum_prune(hidden, cos, sin, visual_ids, *args)
    outputs = [torch.empty_like(t) for t in expected]
    fields = Fields(dict(zip(["span_starts", "span_counts", "budgets", "variant", "rho", "low_frequencies"], args)))
    assert library.spectrum_prune(fields, hidden, cos, sin, visual_ids, outputs) == 0, library.last_error
    kept, expected_kept = outputs[3], expected[3]
    # float32 scores summed in another order may swap tokens whose scores tie to rounding
    assert _jaccard(kept, expected_kept) >= 0.995
    assert bool((kept.diff(dim=1) > 0).all())  # ascending
    same = (kept == expected_kept).all(dim=0)
    if bool(same.all()):
        for output, reference in zip(outputs[:3], expected[:3]):
            assert torch.equal(output, reference)  # the gathers move values, never change them
    assert torch.equal(outputs[0][:, :prefix], hidden[:, :prefix])
    assert torch.equal(outputs[0][:, -tail:], hidden[:, -tail:])
