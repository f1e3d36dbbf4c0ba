"""parity.json: a reloaded result is the same measurements, and verdicts follow the tolerances it is judged by."""

from luvc.parity.results import BackendResult, Check, LayerError, ParityResults
from luvc.parity.tolerances import tolerances_for


def _results() -> ParityResults:
    ort = BackendResult(
        "ort",
        checks=[Check(1, "prefill.logits", "relative_error", 5e-3), Check(4, "tokens", "token_agreement", 0.95)],
        kept_overlap={2: 0.97},
        layer_errors=[LayerError("vision.blocks.0", 1e-6, 1.0), LayerError("llm.layers.1", 4e-3, 0.9999)],
        localised=True,
    )
    return ParityResults("exports/x", "tiny", "fp16", tolerances_for("fp32"), ["a", "b"], [ort], {2: 0.1}, {})


def test_verdicts_follow_the_tolerances():
    strict = _results()
    assert not strict  # 5e-3 is beyond fp32's 1e-4
    assert [check.name for check in strict.backends[0].failures(strict.tolerances)] == [
        "prefill.logits",
        "tokens",
    ]
    assert strict.backends[0].first_diverging_layer(strict.tolerances) == "llm.layers.1"
    lenient = strict.judge(tolerances_for("fp16"))
    assert lenient and lenient.backends[0].first_diverging_layer(lenient.tolerances) is None
    assert str(lenient).endswith("PASSED") and "[FAIL]" in str(strict)


def test_a_saved_result_reloads_to_the_same_measurements(tmp_path):
    results = _results().judge(tolerances_for("fp16"))
    results.save(tmp_path / "parity.json")
    again = ParityResults.load(tmp_path / "parity.json")
    assert again == results
    assert again.to_dict()["passed"] is True
