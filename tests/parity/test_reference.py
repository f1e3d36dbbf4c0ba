"""Which model an export came from: the config identity, with or without the loading dtype."""

import dataclasses

import pytest

from luvc import LuvcError
from luvc.export.exporter import config_hash
from luvc.export.manifest import ExportManifest
from luvc.models import load_model
from luvc.parity.reference import TorchReference


@pytest.mark.parametrize("recorded", ["current", "with dtype (earlier versions)"])
def test_the_reference_accepts_the_identity_an_export_recorded(exports, recorded):
    manifest = ExportManifest.load(exports("tiny-qwen2-vl"), verify=False)
    adapter = load_model("tiny-qwen2-vl")
    identity = config_hash(adapter, with_dtype=recorded != "current")
    model = dataclasses.replace(manifest.model, config_sha256=identity)
    assert TorchReference.from_manifest(dataclasses.replace(manifest, model=model)).adapter.name == "tiny-qwen2-vl"


def test_another_model_is_refused(exports):
    manifest = ExportManifest.load(exports("tiny-qwen2-vl"), verify=False)
    model = dataclasses.replace(manifest.model, config_sha256="0" * 64)
    with pytest.raises(LuvcError, match="has another config than the one this export was made from"):
        TorchReference.from_manifest(dataclasses.replace(manifest, model=model))
