"""Eval results: metrics computed from hand-made answers, and the eval.json round trip."""

import pytest

from luvc.eval.results import Answer, EvalResults, QuestionEntry, Run


def _answer(question: str, read: str, score: float, ttft: float, tokens: list[int]) -> Answer:
    return Answer(question, read, read, score, ttft, tokens, tokens[0], 100, 40, 4, 2048)


@pytest.fixture
def results() -> EvalResults:
    questions = [
        QuestionEntry("a", "yes-no", ["yes"]),
        QuestionEntry("b", "yes-no", ["no"]),
        QuestionEntry("c", "exact", ["red"]),
    ]
    reads = {"none": ("yes", "yes", "red"), "luvc": ("yes", "no", "blue")}
    scores = {"none": (1.0, 0.0, 1.0), "luvc": (1.0, 1.0, 0.0)}
    ttfts = {"none": (10.0, 12.0, 11.0), "luvc": (5.0, 7.0, 6.0)}
    tokens = {"none": ([8, 8], [8, 8], [8, 8]), "luvc": ([4, 0], [4, 0], [4, 2])}
    runs = [
        Run(
            name,
            point,
            "pytorch",
            {},
            [
                _answer(q.id, *values)
                for q, *values in zip(questions, reads[name], scores[name], ttfts[name], tokens[name])
            ],
        )
        for name, point in (("none", ""), ("luvc", "ratio 0.5"))
    ]
    return EvalResults("tiny", "q.jsonl", questions, runs, max_new_tokens=4)


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
