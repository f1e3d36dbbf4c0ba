"""The in-place KV-cache write: both ONNX forms compute what the PyTorch op computes, in ONNX Runtime."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from luvc.export.kv_update import kv_cache_update, mark_opset, translation_table


class Update(torch.nn.Module):
    def forward(self, cache, update, write_indices):
        return kv_cache_update(cache, update, write_indices)


@pytest.mark.parametrize(("form", "op"), [("tensor-scatter", "TensorScatter"), ("scatter-elements", "ScatterElements")])
def test_each_form_writes_one_step_at_each_rows_index(form, op, tmp_path):
    cache = torch.randn(2, 3, 8, 4)
    update = torch.randn(2, 3, 1, 4)
    indices = torch.tensor([5, 2])
    expected = kv_cache_update(cache, update, indices)
    assert torch.equal(expected[0, :, 5], update[0, :, 0]) and torch.equal(expected[1, :, 2], update[1, :, 0])
    assert torch.equal(expected[0, :, :5], cache[0, :, :5])
    program = torch.onnx.export(
        Update(),
        (cache, update, indices),
        dynamo=True,
        opset_version=18,
        custom_translation_table=translation_table(form),
    )
    model = program.model_proto
    mark_opset(model)
    assert op in [node.op_type for node in model.graph.node]
    assert (max(e.version for e in model.opset_import if e.domain in ("", "ai.onnx")) == 24) == (op == "TensorScatter")
    onnx.save(model, tmp_path / "update.onnx")
    session = ort.InferenceSession(str(tmp_path / "update.onnx"), providers=["CPUExecutionProvider"])
    feeds = dict(zip([i.name for i in session.get_inputs()], (cache.numpy(), update.numpy(), indices.numpy())))
    np.testing.assert_array_equal(session.run(None, feeds)[0], expected.numpy())
