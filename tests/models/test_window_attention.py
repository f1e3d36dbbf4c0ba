"""Qwen2.5-VL window attention as one batched attention: the same encoder output as upstream's attention per window,
and a vision graph whose size does not grow with the number of windows."""

import collections

import numpy as np
import pytest
import torch

from luvc.export.bucket_plan import plan_bucket
from luvc.export.convert import OnnxFromGraphSpec
from luvc.export.graphs import vision_spec
from luvc.export.profile import ExportProfile
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.qwen2_vl import QwenVisionGraph
from luvc.models.window_attention import WindowLayout

# processed sizes of the tiny Qwen2.5-VL: 4 equal windows; 9 windows, 5 of them cut by the image edge
EVEN, UNEVEN = (224, 224), (308, 252)


def test_window_layout_gathers_every_token_once_and_scatters_it_back():
    cu_seqlens = np.array([0, 64, 80, 80, 128, 131])  # an empty segment is skipped
    layout = WindowLayout.from_cu_seqlens(cu_seqlens)
    assert (layout.windows, layout.longest) == (4, 64)
    assert layout.key_mask.sum(-1).flatten().tolist() == [64, 16, 48, 3]
    tokens = torch.arange(131)
    batch = tokens[layout.gather].view(layout.windows, layout.longest)
    assert batch[1, :16].tolist() == list(range(64, 80))
    assert batch[3, :3].tolist() == [128, 129, 130]
    assert torch.equal(batch.reshape(-1)[layout.scatter], tokens)


@pytest.fixture(scope="module")
def qwen25():
    adapter = load_model("tiny-qwen2.5-vl")
    adapter.apply_luvc()
    return adapter


@pytest.mark.parametrize("size", [EVEN, UNEVEN])
def test_batched_windows_equal_upstream_window_attention(qwen25, size):
    inputs = qwen25.prepare_inputs([synthetic_image(*size, 3)], "Describe.")
    encoder = qwen25.model.model.visual
    plan = encoder.luvc_plan(inputs["image_grid_thw"])
    windows = [len(stage.cu_window_seqlens) - 1 for stage in plan.stages]
    assert windows[0] == (4 if size == EVEN else 9)
    graph = QwenVisionGraph(encoder, plan)
    with torch.no_grad():
        expected = encoder(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
        batched = graph(inputs["pixel_values"])[0][0]
    torch.testing.assert_close(batched, expected, rtol=0, atol=1e-6)


@pytest.mark.slow  # traces the vision graph
def test_vision_graph_size_does_not_grow_with_the_windows(qwen25):
    profile = ExportProfile(image_sizes=(EVEN, UNEVEN)).resolve(qwen25)
    histograms = []
    for size in (EVEN, UNEVEN):
        model = OnnxFromGraphSpec(vision_spec(qwen25, plan_bucket(qwen25, size), profile), opset=profile.opset)()
        histograms.append(collections.Counter(node.op_type for node in model.graph.node))
    assert histograms[0] == histograms[1]
    assert histograms[0]["Softmax"] == qwen25.model.config.vision_config.depth  # one attention per block
