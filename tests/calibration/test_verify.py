"""Calibration's checks of what it wrote: the warning that its own measurement already puts the export below
parity's bound, and the load check that leaves open only what the agreement runs."""

from luvc.calibration.verify import parity_warning


def test_an_agreement_below_parity_bound_is_said_with_the_remedy_and_one_within_is_not():
    # Qwen2.5-VL-3B (24 layers) INT8 at real widths, as calibrate measured it; parity then FAILED at 0.9884
    below = {"logits_cosine_min": 0.986841, "decode_logits_cosine_min": 0.988214}
    warning = parity_warning(below, "int8", "fp32")
    assert warning is not None
    assert "0.9868" in warning and "0.99" in warning and "--target-agreement 0.99" in warning
    # Qwen3-VL-2B INT8 at real widths: parity PASSED
    assert parity_warning({"logits_cosine_min": 0.991, "decode_logits_cosine_min": 0.993311}, "int8", "fp32") is None


def test_a_decode_step_below_the_bound_warns_though_the_first_token_is_within():
    warning = parity_warning({"logits_cosine_min": 0.995, "decode_logits_cosine_min": 0.985}, "fp8", "fp32")
    assert warning is not None and "0.9850" in warning


def test_int4_is_held_to_its_own_bound_and_names_no_target_agreement():
    # INT4's logits bound is 0.98: 0.985 is within it, where INT8 would warn
    assert parity_warning({"logits_cosine_min": 0.985}, "int4", "fp32") is None
    warning = parity_warning({"logits_cosine_min": 0.97}, "int4", "fp16")
    assert warning is not None and "--target-agreement" not in warning and "fp16 export" in warning


def test_graphs_no_sample_runs_are_loaded_alone_and_closed_again(calibrated):
    from luvc.calibration.verify import open_every_graph
    from luvc.runtime.pipeline import Pipeline

    pipeline = Pipeline(calibrated("tiny-qwen2-vl"))
    loaded = []
    original = pipeline.sessions.open

    def recording(names):
        loaded.append((list(names), sorted(pipeline.sessions.opened())))
        original(names)

    pipeline.sessions.open = recording
    try:
        open_every_graph(pipeline, closed_kinds=("text",))
        assert sorted(pipeline.sessions.opened()) == sorted(set(pipeline.manifest.graphs) - {"prefill_text"})
        # the text prefill loaded first, while no other session held its packed weights
        assert loaded[0] == (["prefill_text"], [])
    finally:
        pipeline.release()
