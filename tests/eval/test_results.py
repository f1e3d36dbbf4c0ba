"""Eval results: metrics computed from hand-made answers, and the eval.json round trip."""

import pytest

from luvc.eval.results import EvalResults


def test_summary_by_hand(results):
    summary = results.summary(results.run("luvc", "ratio 0.5"))
    assert summary.label == "luvc @ ratio 0.5 (pytorch)"
    assert summary.accuracy == pytest.approx(2 / 3)
    assert summary.by_type == pytest.approx({"yes-no": 1.0, "exact": 0.0})
    assert summary.agreement == pytest.approx(1 / 3)  # only "a" reads as the uncompressed model's answer
    assert summary.yes_no.accuracy == 1.0 and summary.yes_no.yes_ratio == 0.5
    assert summary.visual_tokens_per_layer == pytest.approx([4.0, 2 / 3])
    assert summary.mean_visual_tokens == pytest.approx((4 + 2 / 3) / 2)
    assert summary.ttft_ms == 6.0  # the median
    assert (summary.encoder_gflops, summary.llm_gflops, summary.total_gflops) == pytest.approx((1e-7, 4e-8, 1.4e-7))
    assert results.summary(results.reference).agreement == 1.0


def test_round_trip(results, tmp_path):
    results.save(tmp_path / "eval.json")
    loaded = EvalResults.load(tmp_path / "eval.json")
    assert loaded == results
    assert loaded.summaries() == results.summaries()
    assert "luvc @ ratio 0.5 (pytorch)" in str(loaded)
