"""VLMAdapter: prepare_inputs and the request plan refuse what does not fit."""

import pytest

from luvc import LUVCConfig, LuvcError


def test_budget_schedule_that_does_not_fit_the_image(adapter, image):
    adapter.apply_luvc(LUVCConfig(budgets=(5000, 0)))
    with pytest.raises(LuvcError, match="more than the .* visual tokens"):
        adapter.model(**adapter.prepare_inputs([image], "hi"))


def test_prompt_with_uncompressed_placeholder_count_is_rejected(adapter, image):
    if adapter.name == "tiny-gemma3":
        pytest.skip(
            "Gemma 3's projector pools to the same LLM tokens with or without OIM (tests/models/test_gemma3.py)"
        )
    inputs = adapter.prepare_inputs([image], "hi")  # placeholders for LUVC off (the adapter's initial state)
    adapter.apply_luvc()
    with pytest.raises(LuvcError, match="placeholder"):
        adapter.model(**inputs)


def test_mismatched_batch_prompts_are_rejected(adapter, image):
    with pytest.raises(LuvcError, match="different lengths"):
        adapter.prepare_inputs([image, image], ["short", "a much longer prompt"])
