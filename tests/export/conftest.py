import dataclasses

import numpy as np
import pytest
import torch

from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.generation import greedy_generate

PROMPT = "What is in this picture?"


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|: the export tests' relative error."""
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.abs(np.asarray(actual, dtype=np.float64) - expected).max() / np.abs(expected).max())


@dataclasses.dataclass
class Reference:
    """PyTorch LUVC outputs (fp32, default LUVC config) for a batch of two images."""

    inputs: dict
    image_embeds: np.ndarray  # (B, n, D)
    logits: np.ndarray  # (B, V) last prompt token
    kept: dict[int, np.ndarray]
    keys: list[np.ndarray]
    tokens: np.ndarray  # (B, 16) greedy
    step_logits: np.ndarray


@pytest.fixture(scope="session")
def references():
    made = {}

    def get(family: str, height: int = 224, width: int = 224) -> Reference:
        if (family, height, width) not in made:
            adapter = load_model(family)
            adapter.apply_luvc()
            images = [synthetic_image(height, width, seed) for seed in (3, 5)]
            inputs = adapter.prepare_inputs(images, PROMPT)
            with torch.no_grad():
                outputs = adapter.model.model(**inputs, use_cache=True)
                logits = adapter.model.lm_head(outputs.last_hidden_state[:, -1])
                tokens, step_logits = greedy_generate(adapter.model, inputs, 16, return_logits=True)
            cache = outputs.past_key_values
            made[(family, height, width)] = Reference(
                inputs=inputs,
                image_embeds=outputs.image_hidden_states.reshape(2, -1, outputs.image_hidden_states.shape[-1]).numpy(),
                logits=logits.numpy(),
                kept={layer: kept.numpy() for layer, kept in outputs.kept_visual_indices.items()},
                keys=[layer.keys.numpy() for layer in cache.layers],
                tokens=tokens.numpy(),
                step_logits=step_logits.numpy(),
            )
        return made[(family, height, width)]

    return get
