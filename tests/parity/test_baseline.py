"""What compression costs on ONNX Runtime: an uncompressed (--no-luvc) export beside the LUVC export."""

import pytest

from luvc.errors import LuvcError
from luvc.parity import check_parity
from luvc.samples import synthetic_samples


@pytest.fixture(scope="module")
def baseline(uncompressed_export):
    """The uncompressed tiny Qwen2-VL at 224x224 only, exported through the CLI (``tests/conftest.py``)."""
    return uncompressed_export


def test_compression_cost_on_ort_matches_pytorch(exports, baseline):
    samples = synthetic_samples([(224, 224)], count=3)
    results = check_parity(exports("tiny-qwen2-vl"), samples=samples, baseline_dir=baseline, show_progress=False)
    assert results, str(results)
    assert set(results.compression) == {"pytorch", "ort"}
    # fp32 graphs equal PyTorch to ~1e-6, so LUVC-vs-uncompressed must measure the same on both backends
    pytorch, ort = results.compression["pytorch"], results.compression["ort"]
    for metric in ("top1_agreement", "exact_match", "token_agreement"):
        assert ort[metric] == pytorch[metric], metric
    assert ort["kl_divergence"] == pytest.approx(pytorch["kl_divergence"], rel=1e-3)
    assert pytorch["kl_divergence"] > 0  # random tiny weights: compression does move the distribution
    assert "compression cost on ort" in str(results)


@pytest.mark.parametrize(
    ("family", "baseline_is", "message"),
    [
        ("tiny-qwen2-vl", "missing-bucket", "--image-size 168x252 --no-luvc"),  # the export has two buckets
        ("tiny-llava", "other-model", "export the same checkpoint with --no-luvc"),
        ("tiny-qwen2-vl", "compressed", "is LUVC-compressed"),
    ],
)
def test_unfit_baselines_are_refused_with_the_fix(exports, baseline, family, baseline_is, message):
    folder = exports("tiny-qwen2-vl", "fp16") if baseline_is == "compressed" else baseline
    samples = synthetic_samples([(224, 224)]) if baseline_is == "compressed" else None
    with pytest.raises(LuvcError, match=message):
        check_parity(exports(family), samples=samples, baseline_dir=folder, show_progress=False)
