"""LLaVA under LUVC: what its adapter refuses."""

import pytest
import torch

from luvc import LUVCConfig, LuvcError, load_model
from luvc.images import synthetic_image

PROMPT = "Describe."


def test_llava_rejects_oim_after_the_feature_layer(_pristine):
    llava = _pristine["tiny-llava"]
    with pytest.raises(LuvcError, match="image features"):
        type(llava)(llava.model, llava.tokenizer, llava.image_processor).apply_luvc(LUVCConfig(oim_layers=(1,)))


def test_llava_rejects_a_wrong_image_size(_pristine, image):
    import copy

    llava = _pristine["tiny-llava"]
    adapter = type(llava)(copy.deepcopy(llava.model), llava.tokenizer, llava.image_processor)
    adapter.apply_luvc()
    pixels = adapter.prepare_inputs([image], "hi")
    pixels["pixel_values"] = torch.nn.functional.interpolate(pixels["pixel_values"], size=(112, 112))
    with pytest.raises(LuvcError, match="112x112 pixels but this vision tower takes 224x224"):
        adapter.model(**pixels)


def test_llava_refuses_images_of_another_size():
    adapter = load_model("tiny-llava")
    adapter.apply_luvc()
    inputs = adapter.prepare_inputs([synthetic_image(224, 224, 1)], PROMPT)
    inputs["pixel_values"] = inputs["pixel_values"][..., :-2, :-2]
    with pytest.raises(LuvcError, match="this vision tower takes"):
        adapter.model.model(**inputs)
