"""INT8 keeps a product float when the calibration data show its input heavy tailed, whatever the module is called."""

import numpy as np
import onnx
import pytest
import torch

from luvc.calibration.tails import TAIL_BOUNDS, TailStatistics, heavy_tailed_nodes
from luvc.cli.main import main
from luvc.export.exporter import export_model
from luvc.export.manifest import ExportManifest
from luvc.export.profile import ExportProfile
from luvc.models import load_model


def test_tail_statistics_pool_values_across_runs_and_graphs():
    first, second = TailStatistics(), TailStatistics()
    first.add(np.array([3.0, -4.0], dtype=np.float32))
    second.add(np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32))
    first.merge(second)
    # amax 4 over the rms of (9 + 16 + 1) / 6
    assert first.ratio == pytest.approx(4.0 / (26.0 / 6.0) ** 0.5)
    assert TailStatistics().ratio == 0.0


def _statistics(ratio: float) -> TailStatistics:
    """Statistics of 1000 values at 1 and one at ``ratio`` times the rms they make together."""
    stats = TailStatistics(sum_of_squares=1000.0, count=1001)
    # amax**2 + 1000 = count * (amax / ratio)**2
    stats.amax = (1000.0 / (1001 / ratio**2 - 1)) ** 0.5
    stats.sum_of_squares += stats.amax**2
    return stats


def test_only_inputs_above_the_bound_stay_float_and_only_at_int8():
    bound = TAIL_BOUNDS["int8"]
    pooled = {"/a/MatMul": _statistics(bound * 1.05), "/b/MatMul": _statistics(bound * 0.95)}
    assert pooled["/a/MatMul"].ratio == pytest.approx(bound * 1.05)
    kept = heavy_tailed_nodes(pooled, "int8")
    assert list(kept) == ["/a/MatMul"]
    assert kept["/a/MatMul"] == f"heavy-tailed input: amax {bound * 1.05:.1f}x its rms (bound {bound:g}x)"
    assert heavy_tailed_nodes(pooled, "fp8") == {}


class _RenamedMLP(torch.nn.Module):
    """A gated MLP whose projections are called w1, w3 and w2 (as some checkpoints name them)."""

    def __init__(self, mlp: torch.nn.Module) -> None:
        super().__init__()
        self.w1, self.w3, self.w2, self.act = mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act(self.w1(hidden)) * self.w3(hidden))


@pytest.mark.slow  # exports and calibrates a model of its own
def test_a_renamed_mlp_with_outlier_channels_keeps_that_down_projection_float(tmp_path, capsys):
    adapter = load_model("tiny-qwen2-vl")
    layers = adapter.language_model.layers
    for layer in layers:
        layer.mlp = _RenamedMLP(layer.mlp)
    with torch.no_grad():  # two outlier channels in layer 1's up projection, as trained LLMs have
        layers[1].mlp.w3.weight[:2] *= 60.0
    export_model(adapter, tmp_path / "fp32", ExportProfile(image_sizes=((224, 224),)), show_progress=False)
    out = tmp_path / "int8"
    assert main(["calibrate", str(tmp_path / "fp32"), "--precision", "int8", "--out", str(out)]) == 0
    assert "kept float, input heavy tailed: 1 product(s)" in capsys.readouterr().out
    manifest = ExportManifest.load(out)
    prefill = manifest.graphs["prefill_224x224"]
    excluded = manifest.quantization.excluded_nodes["prefill_224x224"]
    down = [f"/llm/layers.{index}/mlp/w2/MatMul" for index in range(len(layers))]
    assert excluded[down[1]].startswith("heavy-tailed input: amax ")
    assert all(node not in excluded for index, node in enumerate(down) if index != 1)
    # the prefill and decode graphs share their weights: the same product stays float in both
    assert manifest.quantization.excluded_nodes["decode"][down[1]] == excluded[down[1]]
    model = onnx.load(str(out / prefill.file))
    dequantized = {name for node in model.graph.node if node.op_type == "DequantizeLinear" for name in node.output}
    readers = {node.name for node in model.graph.node if dequantized & set(node.input)}
    assert down[0] in readers and down[1] not in readers
    # the report counts the rule once per graph, the ratio left to the manifest
    assert "| prefill_224x224 | heavy-tailed input | 1 |" in (out / "report.md").read_text()
