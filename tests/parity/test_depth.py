"""Parity at real depth: an fp16 export of a Qwen2-VL with 28 decoder layers (narrow, random weights), run in
float16 arithmetic as a GPU runs it, PASSES; the same export with a wrong SPU span FAILS."""

import json

import onnx
import pytest
import torch
from onnx import numpy_helper

from luvc.export.exporter import export_model
from luvc.export.manifest import content_digest, sha256_file
from luvc.export.profile import ExportProfile
from luvc.models import load_model
from luvc.models.tiny import VOCAB_SIZE, save_random_qwen2_vl
from luvc.parity import check_parity
from luvc.samples import synthetic_samples

DEPTH = 28  # Qwen2-VL-2B's decoder layers
WIDTHS = dict(
    vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=256, heads=4, kv_heads=2, vision_width=64, vision_heads=4
)


@pytest.fixture(scope="module")
def deep_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("depth")
    save_random_qwen2_vl(folder / "checkpoint", DEPTH, 2, torch.float32, (224, 224), **WIDTHS)
    profile = ExportProfile(image_sizes=((224, 224),), precision="fp16")
    return export_model(load_model(str(folder / "checkpoint")), folder / "export", profile, show_progress=False)


def _shift_first_span(folder, graph_file: str) -> str:
    """Make the first SPU cut gather its kept tokens one row late (where the second TopK's indices become rows: an
    ``Add`` of the span start, or, for rows at their own ``visual_shift``, the ``Sub`` of where each kept token now
    sits), re-hashed in the manifest: the scores and the kept indices it reports stay right, the rows it keeps are the
    wrong ones."""
    path = folder / graph_file
    model = onnx.load(str(path), load_external_data=False)
    producers = {out: node for node in model.graph.node for out in node.output}
    constants = {
        node.output[0]: numpy_helper.to_array(node.attribute[0].t)
        for node in model.graph.node
        if node.op_type == "Constant"
    }
    constants.update(
        {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT64}
    )
    late = {"Add": 1, "Sub": -1}  # what moves the rows one later
    for node in model.graph.node:
        source = producers.get(node.input[0]) if node.op_type in late and "/spu/" in node.name else None
        if source is not None and source.op_type == "TopK" and node.input[1] in constants:
            start = constants[node.input[1]] + late[node.op_type]
            model.graph.initializer.append(numpy_helper.from_array(start, f"{node.name}/shifted_start"))
            node.input[1] = f"{node.name}/shifted_start"
            onnx.save(model, str(path))
            manifest = json.loads((folder / "manifest.json").read_text())
            manifest["files"][graph_file] = sha256_file(path)
            manifest["content_sha256"] = content_digest(manifest)  # sealed again, as a re-export would
            (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
            return node.name
    raise AssertionError("no SPU span start found")


@pytest.mark.slow  # a 28-layer export and two parity runs (about 3 minutes on 2 cores before they were trimmed)
def test_a_28_layer_fp16_export_passes_and_a_wrong_span_fails(deep_export, tmp_path):
    import shutil

    samples = synthetic_samples([(224, 224)], count=2)
    results = check_parity(deep_export, samples=samples, show_progress=False)
    assert results, str(results)
    assert sorted(results.backends[0].kept_overlap)[-1] >= DEPTH // 2  # SPU cuts reach deep into the stack
    # the last cuts take two tokens to one: their scores are equal but for rounding, and either pick is a tie
    assert all(selection.non_ties == 0 for selection in results.backends[0].selections.values())

    broken = tmp_path / "broken"
    shutil.copytree(deep_export, broken)
    shifted = _shift_first_span(broken, "prefill_224x224.onnx")
    assert shifted.startswith("/llm/layers.")
    # one sample and two tokens: the prefill's keys and values, where the wrong rows show, and the localisation
    results = check_parity(broken, samples=samples[:1], max_new_tokens=2, show_progress=False)
    assert not results
    failed = {check.name for check in results.backends[0].failures(results.tolerances)}
    assert any(name.startswith("prefill.present") for name in failed), failed
    layer = shifted.split("/")[2]  # "layers.2": where the cut gathers the wrong rows, and the localisation finds it
    assert results.backends[0].first_diverging_layer(results.tolerances) == f"llm.{layer}"
