"""The criteria registry: every criterion either exports or says plainly why not."""

from luvc.compress.config import PRUNING_CRITERIA
from luvc.compress.criteria import (
    CRITERIA,
    ENCODER_ATTENTION,
    LLM_ATTENTION,
    LLM_ATTENTION_EACH_CUT,
    ranks_in_encoder,
    ranks_in_llm,
)


def test_attention_criteria_refuse_export_and_name_pytorch():
    for name, criterion in CRITERIA.items():
        if criterion.ranking is None:
            assert criterion.export_refusal is None, name
        else:
            assert "PyTorch only" in criterion.export_refusal and name in criterion.export_refusal
    assert {c.ranking for c in CRITERIA.values()} == {None, LLM_ATTENTION, LLM_ATTENTION_EACH_CUT, ENCODER_ATTENTION}
    assert [name for name in CRITERIA if ranks_in_llm(name)] == ["fastv", "pdrop", "todre"]
    assert CRITERIA["v2drop"].export_refusal is None and CRITERIA["v2drop"].reads_variation


def test_every_criterion_is_a_config_value():
    assert set(PRUNING_CRITERIA) == {*CRITERIA, "none"}
    assert ranks_in_encoder("visionzip") and not ranks_in_encoder("fastv") and not ranks_in_encoder("none")
