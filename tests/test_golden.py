"""Golden results of each tiny family, pinned: the visual tokens each SPU layer keeps and the first greedy tokens, in
PyTorch and from the fp32 export on ONNX Runtime.

The other tests compare the export with PyTorch, so a change that moves both the same way (a scoring or merge
change, a template change, a new default) passes them; these catch it. The values were recorded from the tiny
models (seeded random weights) on the synthetic images below. Margins at the time of recording, so that a change of
CPU does not flip them: the smallest top-1/top-2 logit gap over the 8 steps is 1.4e-3 (LLaVA) to 8.6e-3 (Qwen2.5-VL);
the smallest score gap at an SPU cut is 0.6% of the score (LLaVA) to 9.9% (Qwen2.5-VL); Qwen3-VL (added later):
5.9e-3 and 3.3%; InternVL (5 tiles of 8 tokens): 0.29 and 1.7%; Qwen2-VL (image seed 3 and a prompt of its own, so
that its tokens vary): 6.3e-3 and 4.1%. InternVL's tiny model answers one token whatever the input, so its pin
adds the first step's four best tokens in order (gaps 0.29, 0.026, 0.025 and 4.6e-3 to the fifth); Gemma 3 (PyTorch
only: it does not export yet): 1.9e-3 and 19.5%. A deliberate
change of results updates them here, with the reason in the commit.
"""

import numpy as np
import pytest
import torch

from luvc.images import synthetic_image
from luvc.models import EXPORTED_TINY_MODELS, load_model
from luvc.models.generation import greedy_generate
from luvc.runtime.pipeline import Pipeline

PROMPT = "What is in this picture?"
IMAGE_SEED = 11
STEPS = 8

GOLDEN = {
    "tiny-qwen2-vl": {
        "image_seed": 3,
        "prompt": "Describe the scene in detail.",
        "kept": {2: [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15, 16, 18, 19, 22, 23], 3: []},
        "tokens": [175, 90, 116, 260, 201, 77, 76, 203],
    },
    "tiny-qwen2.5-vl": {
        "kept": {2: [1, 4, 8, 12, 14, 15, 17, 18, 19, 20, 21, 23, 24, 27, 28, 30], 3: []},
        "tokens": [211, 159, 59, 236, 68, 57, 153, 168],
    },
    "tiny-qwen3-vl": {
        "kept": {2: [3, 4, 5, 8, 9, 11, 12, 13, 15, 16, 18, 19, 20, 24], 3: []},
        "tokens": [2, 171, 244, 146, 263, 21, 95, 166],
    },
    "tiny-internvl": {
        "kept": {2: [1, 2, 3, 4, 5, 6, 7, 10, 15, 16, 17, 18, 19, 25, 28, 31, 32, 35, 36, 37], 3: []},
        "tokens": [198, 198, 198, 198, 198, 198, 198, 198],
        "first_step_best": [198, 120, 255, 69],
    },
    "tiny-llava": {
        "kept": {
            2: [2, 4, 9, 10, 11, 12, 17, 18, 19, 20, 21, 23, 25, 27, 28, 31, 33, 35, 36, 39, 41, 43, 44, 46, 47, 49]
            + [51, 52, 54, 55, 59, 60, 62, 63, 64, 67, 68, 70, 71, 72, 73, 78, 79, 80, 81, 82, 83, 86, 87, 88, 90]
            + [92, 94, 96, 99, 100, 101, 104, 105, 107, 109, 113, 120, 124],
            3: [],
        },
        "tokens": [224, 6, 151, 10, 254, 268, 140, 252],
    },
    "tiny-gemma3": {
        "kept": {2: [3, 4, 6, 8, 10, 11, 12, 13], 3: []},
        "tokens": [151, 156, 115, 135, 156, 115, 135, 53],
    },
}


def _image(family: str):
    return synthetic_image(224, 224, GOLDEN[family].get("image_seed", IMAGE_SEED))


@pytest.mark.parametrize("family", list(GOLDEN))
def test_pytorch_luvc_keeps_and_generates_the_golden_results(family):
    adapter = load_model(family)
    adapter.apply_luvc()
    golden = GOLDEN[family]
    inputs = adapter.prepare_inputs([_image(family)], golden.get("prompt", PROMPT))
    with torch.no_grad():
        outputs = adapter.model.model(**inputs, use_cache=True)
        tokens, logits = greedy_generate(adapter.model, inputs, STEPS, return_logits=True)
    kept = {layer: indices[0].tolist() for layer, indices in outputs.kept_visual_indices.items()}
    assert kept == golden["kept"]
    assert tokens[0].tolist() == golden["tokens"]
    if "first_step_best" in golden:
        best = torch.argsort(logits[0, 0], descending=True)[: len(golden["first_step_best"])]
        assert best.tolist() == golden["first_step_best"]


@pytest.mark.parametrize("family", [family for family in GOLDEN if family in EXPORTED_TINY_MODELS])
def test_export_keeps_and_generates_the_golden_results(family, exports):
    pipeline = Pipeline(exports(family))
    golden = GOLDEN[family]
    prepared = pipeline.prepare([_image(family)], [golden.get("prompt", PROMPT)])
    tokens, logits, request = pipeline.greedy(prepared, STEPS)
    assert tokens[0].tolist() == golden["tokens"]
    if "first_step_best" in golden:
        assert np.argsort(-logits[0, 0])[: len(golden["first_step_best"])].tolist() == golden["first_step_best"]
    for layer, expected in golden["kept"].items():
        if expected:  # a layer that keeps nothing has no output
            kept = request.prefill_outputs[f"kept_visual_indices.{layer}"]
            np.testing.assert_array_equal(kept.cpu().numpy()[0], expected)
