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


@torch.no_grad()
def test_visionzip_keeps_the_patches_the_cls_token_attends_to_in_the_feature_layer(image):
    """VisionZip on LLaVA: the CLS token's attention (mean over heads) in the layer whose output the projector takes
    (vision_feature_layer -2), checked against eager attention's weights."""
    llava = load_model("tiny-llava")
    llava.model.set_attn_implementation("eager")
    tower = llava.model.model.vision_tower
    feature_block = getattr(tower, "vision_model", tower).encoder.layers[llava.feature_blocks()[0]]
    weights = []
    hook = feature_block.self_attn.register_forward_hook(lambda _m, _a, output: weights.append(output[1]))
    llava.apply_luvc(LUVCConfig(spu_variant="visionzip", budgets=(40, 40, 20, 0)))
    outputs = llava.model.model(**llava.prepare_inputs([image], PROMPT))
    hook.remove()
    ranking = weights[0][0, :, 0, 1:].mean(dim=0)  # the CLS row, without its own column
    for layer, kept in outputs.kept_visual_indices.items():
        expected = ranking.topk(kept.shape[1]).indices.sort().values
        assert kept[0].tolist() == expected.tolist(), layer
