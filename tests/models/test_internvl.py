"""InternVL3 under LUVC: merge units that keep the pixel shuffle valid, every tile compressed, tile-layout buckets."""

import pytest
import torch
from transformers.models.internvl.modeling_internvl import InternVLModel

from luvc.compress.config import LUVCConfig
from luvc.errors import LuvcError
from luvc.export.exporter import export_model
from luvc.export.profile import ExportProfile
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.internvl import unit_order
from luvc.processing import tile_canvas
from luvc.runtime.pipeline import GenerationOptions, Pipeline


@pytest.mark.parametrize("side", [4, 8, 32])
def test_unit_order_then_a_reshape_is_upstreams_pixel_shuffle(side):
    tokens = torch.randn(3, side * side, 5)
    upstream = InternVLModel.pixel_shuffle(None, tokens.reshape(3, side, side, 5), 0.5).reshape(3, -1, 20)
    assert torch.equal(tokens[:, unit_order(side)].reshape(3, -1, 20), upstream)


def test_every_tile_and_the_thumbnail_are_compressed():
    internvl = load_model("tiny-internvl")
    internvl.apply_luvc()
    image = synthetic_image(224, 336, 1)  # a 2 x 3 tile grid and the thumbnail
    assert tile_canvas((224, 336), internvl.image_processor) == (224, 336)
    inputs = internvl.prepare_inputs([image], "Describe.")
    assert "num_patches" not in inputs and inputs["pixel_values"].shape[0] == 7
    uncompressed = internvl.plan(inputs, LUVCConfig.off()).tokens_per_image
    assert uncompressed == (7 * 16,)  # 8 x 8 patches a tile -> 16 tokens after the pixel shuffle
    assert internvl.plan(inputs).tokens_per_image == (7 * 8,)  # one OIM step on every tile
    with torch.no_grad():
        outputs = internvl.model.model(**inputs)
    assert outputs.image_hidden_states.shape[0] == 7 * 8
    assert list(outputs.kept_visual_indices) == [2, 3] and outputs.kept_visual_indices[3].shape[1] == 0


def test_oim_after_the_feature_layer_is_refused():
    internvl = load_model("tiny-internvl")
    with pytest.raises(LuvcError, match=r"merge at or after block 2, whose output InternVL takes as image features"):
        internvl.apply_luvc(LUVCConfig(oim_layers=(2,)))


@pytest.mark.slow
def test_an_image_of_another_tile_layout_names_the_buckets_and_the_flag(tmp_path):
    internvl = load_model("tiny-internvl")
    profile = ExportProfile(image_sizes=((224, 336),))
    out = export_model(internvl, tmp_path / "export", profile, show_progress=False)
    pipeline = Pipeline(out)
    pixels, canvas = pipeline.preparer.preprocess([synthetic_image(400, 120, 2)])  # a tall image: a 3 x 1 grid
    assert canvas == (336, 112) and pixels.shape[0] == 4
    with pytest.raises(LuvcError, match=r"buckets: \['224x336'\].*re-export with --image-size 336x112"):
        pipeline.manifest.bucket_for(canvas)
    result = pipeline.generate([synthetic_image(224, 336, 3)], "Describe.", GenerationOptions(4))
    assert len(result.texts) == 1


def test_shuffled_ranking_sums_the_patches_of_each_pixel_shuffled_token():
    from luvc.models.internvl import shuffled_ranking

    scores = torch.rand(2, 64)
    shuffled = InternVLModel.pixel_shuffle(None, scores.reshape(2, 8, 8, 1), 0.5)  # (2, 4, 4, 4): the 4 patches
    assert torch.allclose(shuffled_ranking(scores), shuffled.sum(-1).reshape(-1))


@torch.no_grad()
def test_visionzip_ranks_each_tiles_tokens_by_the_cls_attention_in_the_feature_layer():
    internvl = load_model("tiny-internvl")
    internvl.model.set_attn_implementation("eager")
    layer = internvl.vision_blocks[internvl.feature_block()]
    weights = []
    hook = layer.attention.register_forward_hook(lambda _m, _a, output: weights.append(output[1]))
    internvl.apply_luvc(LUVCConfig(spu_variant="visionzip", budgets=(30, 30, 10, 0)))
    inputs = internvl.prepare_inputs([synthetic_image(224, 336, 1)], "Describe.")  # 6 tiles and the thumbnail
    outputs = internvl.model.model(**inputs)
    hook.remove()
    cls_row = weights[0][:, :, 0, 1:].mean(dim=1)  # (tiles, patches)
    side = int(cls_row.shape[1] ** 0.5)
    ranking = InternVLModel.pixel_shuffle(None, cls_row.reshape(-1, side, side, 1), 0.5).sum(-1).reshape(-1)
    for layer_index, kept in outputs.kept_visual_indices.items():
        expected = ranking.topk(kept.shape[1]).indices.sort().values
        assert kept[0].tolist() == expected.tolist(), layer_index
