"""manifest.json: hashes, I/O, budgets; missing external data; nothing half-written after an interruption."""

import json
import shutil

import onnx
import pytest

import luvc.export.exporter as exporter
from luvc.errors import LuvcError
from luvc.export.manifest import MANIFEST_NAME, ExportManifest, content_digest, load_graph, sha256_file
from luvc.export.manifest_entries import TensorEntry
from luvc.export.profile import ExportProfile
from luvc.models import load_model
from luvc.runtime.pipeline import Pipeline
from luvc.staging import RECORD


def test_manifest_hashes_match_every_file(exports):
    folder = exports("tiny-llava")
    manifest = ExportManifest.load(folder)
    on_disk = {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()} - {MANIFEST_NAME, RECORD}
    assert "tokenizer/tokenizer.json" in on_disk and any(name.startswith("processor/") for name in on_disk)
    assert set(manifest.files) == on_disk
    assert "weights.data" in manifest.files  # exported with external data, shared by the graphs
    for name, digest in manifest.files.items():
        assert sha256_file(folder / name) == digest


def test_manifest_describes_graphs_and_budgets(exports):
    folder = exports("tiny-qwen2-vl")
    manifest = ExportManifest.load(folder)
    assert manifest.model.architecture == "Qwen2VLForConditionalGeneration" and manifest.opset == 18
    assert {"torch", "transformers", "onnx", "exporter"} <= set(manifest.versions)
    bucket = manifest.buckets["224x224"]
    assert bucket.budgets[0] == bucket.tokens_per_image and bucket.budgets[-1] == 0
    prefill = manifest.graphs["prefill_224x224"]
    shapes = {entry.name: entry.shape for entry in prefill.outputs}
    assert shapes["present.0.key"][0] == "batch" and "sequence_length" in str(shapes["present.3.key"][2])
    decode_inputs = {entry.name: entry for entry in manifest.graphs["decode"].inputs}
    capacity = manifest.kv_cache.capacity
    assert decode_inputs["past_key_values.2.value"].shape == ("batch", 2, capacity[2], 8)
    assert decode_inputs["kv_write_index"] == TensorEntry("kv_write_index", "int64", (4, "batch"))  # layer, row
    prefill_inputs = {entry.name: entry for entry in prefill.inputs}
    assert prefill_inputs["prompt_lengths"] == TensorEntry("prompt_lengths", "int64", ("batch",))
    assert prefill_inputs["visual_shift"] == TensorEntry("visual_shift", "int64", ("batch",))
    text = manifest.graphs[manifest.text_prefill]  # prompts without visuals: no shift, no kept indices
    assert text.kind == "text" and [entry.name for entry in text.inputs] == [
        "inputs_embeds",
        "position_ids",
        "prompt_lengths",
    ]
    assert manifest.kv_cache.update == "tensor-scatter"
    assert decode_inputs["inputs_embeds"].dtype == "float"
    assert tuple(f"/llm/layers.{layer}/spu" for layer in bucket.prune_layers) == prefill.node_prefixes
    assert manifest.graphs["vision_224x224"].node_prefixes == ("/vision/blocks.0/oim",)
    model = onnx.load(folder / prefill.file, load_external_data=False)
    assert [i.name for i in model.graph.input] == [entry.name for entry in prefill.inputs]


def test_external_data_graph_opens_by_path_in_onnxruntime(exports):
    import numpy as np
    import onnxruntime as ort

    folder = exports("tiny-llava")
    session = ort.InferenceSession(str(folder / "embed.onnx"), providers=["CPUExecutionProvider"])
    (embeds,) = session.run(None, {"input_ids": np.array([[1, 2, 3]], dtype=np.int64)})
    assert embeds.shape == (1, 3, 32)


def test_changed_file_fails_verification(exports, tmp_path):
    folder = shutil.copytree(exports("tiny-qwen2-vl"), tmp_path / "copy")
    with open(folder / "decode.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(LuvcError, match="decode.onnx does not match its sha256"):
        ExportManifest.load(folder)


def test_missing_external_data_file_is_a_clear_error(exports, tmp_path):
    folder = shutil.copytree(exports("tiny-llava"), tmp_path / "copy")
    (folder / "weights.data").unlink()
    with pytest.raises(LuvcError, match="weights.data is listed in manifest.json but missing"):
        ExportManifest.load(folder)
    with pytest.raises(LuvcError, match=r"external-data file 'weights.data', which is missing"):
        load_graph(folder, "prefill_224x224")
    with pytest.raises(LuvcError, match="which is missing"):
        Pipeline(folder, verify=False).sessions["prefill_224x224"]


@pytest.mark.slow  # traces graphs until interrupted
def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):  # in one process (test_graph_workers: in several)
    calls = []
    real_save = exporter.save_model

    def save_then_interrupt(model, path, external_data, weights, source=None):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl-C during the second graph does (with its weights in scratch)
        return real_save(model, path, external_data, weights, source)

    monkeypatch.setattr(exporter, "save_model", save_then_interrupt)
    out = tmp_path / "export"
    with pytest.raises(KeyboardInterrupt):
        exporter.export_model(
            load_model("tiny-qwen2-vl"), out, ExportProfile(image_sizes=((224, 224),)), show_progress=False, jobs=1
        )
    assert calls == ["embed.onnx", "vision_224x224.onnx"]
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_needs_overwrite(tmp_path):
    (tmp_path / "export").mkdir()
    with pytest.raises(LuvcError, match="already exists; choose another --out or pass --overwrite"):
        exporter.export_model(load_model("tiny-llava"), tmp_path / "export", show_progress=False)


def test_manifest_from_another_format_is_refused(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format": "something-else", "format_version": 7}))
    with pytest.raises(LuvcError, match="re-export with this version"):
        ExportManifest.load(tmp_path)


def test_manifest_of_an_older_version_names_both_versions(exports, tmp_path):
    data = json.loads((exports("tiny-llava") / MANIFEST_NAME).read_text())
    data["format_version"] = 2
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(LuvcError, match=r"v2, this luvc-export reads 'luvc-export/onnx' v6; re-export"):
        ExportManifest.load(tmp_path, verify=False)


@pytest.mark.parametrize("section, field", [("template", "text"), ("buckets", "224x224"), ("kv_cache", "capacity")])
def test_manifest_missing_a_field_is_one_clear_error(exports, tmp_path, section, field):
    data = json.loads((exports("tiny-llava") / MANIFEST_NAME).read_text())
    if section == "buckets":
        del data[section][field]["visual_start"]
    else:
        del data[section][field]
    data["content_sha256"] = content_digest(data)  # sealed: the fields are what is checked
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(LuvcError, match="does not have the fields this luvc-export reads"):
        ExportManifest.load(tmp_path, verify=False)


def test_a_manifest_edited_after_the_export_is_refused_and_a_reformatted_one_is_not(exports, tmp_path):
    """Budgets edited to [32, 32, 32, 32] in a 32 -> 0 export would be shown by inspect and trusted by parity."""
    folder = shutil.copytree(exports("tiny-qwen2-vl"), tmp_path / "copy")
    written = json.loads((folder / MANIFEST_NAME).read_text())
    assert written["content_sha256"] == content_digest(written)
    reformatted = dict(reversed(list(written.items())))  # other key order, no indentation: the same content
    (folder / MANIFEST_NAME).write_text(json.dumps(reformatted))
    assert ExportManifest.load(folder).buckets.keys() == written["buckets"].keys()
    edited = json.loads(json.dumps(written))
    bucket = next(iter(edited["buckets"].values()))
    bucket["budgets"] = [bucket["budgets"][0]] * len(bucket["budgets"])
    (folder / MANIFEST_NAME).write_text(json.dumps(edited, indent=2))
    with pytest.raises(LuvcError, match=r"manifest.json was edited after luvc-export wrote it .* restore it"):
        ExportManifest.load(folder, verify=False)
    for unsealed in (None, "delete"):  # issue 77: the seal switched off by setting it to null, or deleting it
        if unsealed is None:
            edited["content_sha256"] = None
        else:
            del edited["content_sha256"]
        (folder / MANIFEST_NAME).write_text(json.dumps(edited, indent=2))
        with pytest.raises(
            LuvcError, match=r"manifest.json has no content_sha256, which luvc-export writes into every v6"
        ):
            ExportManifest.load(folder, verify=False)
    edited["format_version"] = 5  # a v5 manifest may predate the seal: read as before
    (folder / MANIFEST_NAME).write_text(json.dumps(edited, indent=2))
    assert ExportManifest.load(folder, verify=False).buckets[next(iter(edited["buckets"]))].budgets[-1] > 0


def test_a_manifest_read_from_v5_is_written_as_v6_and_sealed(exports, tmp_path):
    data = json.loads((exports("tiny-llava") / MANIFEST_NAME).read_text())
    data["format_version"] = 5
    del data["content_sha256"]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    manifest = ExportManifest.load(tmp_path, verify=False)
    (tmp_path / "again").mkdir()
    manifest.save(tmp_path / "again")
    written = json.loads((tmp_path / "again" / MANIFEST_NAME).read_text())
    assert written["format_version"] == 6 and written["content_sha256"] == content_digest(written)


def test_manifest_round_trips_through_json(exports, tmp_path):
    manifest = ExportManifest.load(exports("tiny-qwen2-vl"))
    manifest.save(tmp_path)
    again = ExportManifest.load(tmp_path, verify=False)
    assert again == manifest
    assert again.graphs["decode"].input("kv_write_index").shape == (4, "batch")
