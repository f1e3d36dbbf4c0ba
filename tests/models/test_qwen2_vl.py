"""Qwen2-VL under LUVC: what the Qwen-VL forward refuses."""

import pytest

from luvc import LuvcError
from luvc.images import synthetic_image
from luvc.models import load_model

PROMPT = "Describe."


def test_qwen_refuses_video_inputs():
    adapter = load_model("tiny-qwen2-vl")
    adapter.apply_luvc()
    inputs = adapter.prepare_inputs([synthetic_image(224, 224, 1)], PROMPT)
    with pytest.raises(LuvcError, match="takes images only; video inputs"):
        adapter.model.model(**inputs, video_grid_thw=inputs["image_grid_thw"])
