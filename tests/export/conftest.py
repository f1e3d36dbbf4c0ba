import dataclasses

import numpy as np
import pytest

from luvc.compress.config import LUVCConfig
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.parity.reference import TorchReference

PROMPT = "What is in this picture?"


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|: the export tests' relative error."""
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.abs(np.asarray(actual, dtype=np.float64) - expected).max() / np.abs(expected).max())


@dataclasses.dataclass
class Reference:
    """PyTorch LUVC outputs (fp32, default LUVC config) for a batch of two images, from parity's reference."""

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
            reference = TorchReference(adapter, LUVCConfig())
            images = [synthetic_image(height, width, seed) for seed in (3, 5)]
            inputs = adapter.prepare_inputs(images, PROMPT)
            run = reference.run(inputs, 16)
            made[(family, height, width)] = Reference(
                inputs=inputs,
                image_embeds=run.image_embeds,
                logits=run.logits,
                kept=run.kept,
                keys=[run.presents[f"present.{layer}.key"] for layer in range(adapter.num_layers)],
                tokens=run.tokens,
                step_logits=run.step_logits,
            )
        return made[(family, height, width)]

    return get
