"""The multimodal forward shared by every family: what it refuses, and what its hooks hand the decoder."""

import pytest
import torch

from luvc.images import synthetic_image
from luvc.models import TINY_MODELS, load_model

PROMPT = "Describe."


@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_image_rows_reach_the_decoder_as_the_plan_counts(family):
    adapter = load_model(family)
    adapter.apply_luvc()
    images = [synthetic_image(224, 224, seed) for seed in (1, 2)]
    inputs = adapter.prepare_inputs(images, PROMPT)
    with torch.no_grad():
        outputs = adapter.model.model(**inputs)
    trace = adapter.plan(adapter.preprocess_images(images))
    assert outputs.image_hidden_states.shape[0] == sum(trace.tokens_per_image)
    first_spu_layer = min(outputs.kept_visual_indices)
    assert outputs.kept_visual_indices[first_spu_layer].shape[0] == len(images)
