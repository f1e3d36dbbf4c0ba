"""Parity tolerances: the direction of each bound, the order of precisions, and unknown precisions."""

import pytest

from luvc.errors import LuvcError
from luvc.parity.tolerances import METRICS, TOLERANCES, tolerances_for


def test_bounds_point_the_right_way():
    fp16 = tolerances_for("fp16")
    assert fp16.passes("cosine", 0.9995) and not fp16.passes("cosine", 0.998)
    assert fp16.passes("relative_error", 0.005) and not fp16.passes("relative_error", 0.02)
    assert fp16.passes("kl_divergence", 1e-3) and not fp16.passes("kl_divergence", 2e-3)
    assert fp16.passes("token_agreement", 0.9) and not fp16.passes("token_agreement", 0.89)


@pytest.mark.parametrize("metric", list(METRICS))
def test_lower_precisions_are_never_held_tighter(metric):
    order = ["fp32", "fp16", "int8"]
    limits = [tolerances_for(precision).limit(metric) for precision in order]
    larger_is_better = METRICS[metric][1]
    assert limits == sorted(limits, reverse=larger_is_better)


def test_every_precision_bounds_every_metric():
    for tolerances in TOLERANCES.values():
        assert all(isinstance(tolerances.limit(metric), float) for metric in METRICS)


def test_unknown_precision_is_named():
    with pytest.raises(LuvcError, match=r"No parity tolerances for precision 'nvfp4'; known: \['fp32'"):
        tolerances_for("nvfp4")


@pytest.mark.parametrize("metric", list(METRICS))
def test_bf16_compute_is_never_held_tighter_than_the_export_or_fp16(metric):
    from luvc.parity.tolerances import COMPUTE_TOLERANCES, backend_tolerances

    larger_is_better = METRICS[metric][1]
    for precision in TOLERANCES:
        bounds = backend_tolerances(tolerances_for(precision), "bf16")
        looser = [bounds.limit(metric), tolerances_for(precision).limit(metric)]
        assert bounds.limit(metric) == (min if larger_is_better else max)(looser)
        assert bounds.limit(metric) == (min if larger_is_better else max)(
            bounds.limit(metric), COMPUTE_TOLERANCES["bf16"].limit(metric)
        )
    fp16, bf16 = TOLERANCES["fp16"].limit(metric), COMPUTE_TOLERANCES["bf16"].limit(metric)
    assert (bf16 <= fp16) if larger_is_better else (bf16 >= fp16)
    assert backend_tolerances(TOLERANCES["fp32"], "") == TOLERANCES["fp32"]
