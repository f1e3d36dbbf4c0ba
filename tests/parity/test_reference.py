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


def test_a_forced_selection_keeps_the_given_tokens_and_the_natural_one_changes_nothing(exports):
    """Parity compares a backend that kept other tokens (at a near tie) against PyTorch run with its selection."""
    import numpy as np

    from luvc.samples import synthetic_samples

    manifest = ExportManifest.load(exports("tiny-qwen2-vl"), verify=False)
    reference = TorchReference.from_manifest(manifest)
    sample = synthetic_samples([bucket.size for bucket in manifest.buckets.values()])[0]
    inputs = reference.adapter.prepare_inputs([sample.image], sample.prompt)
    natural = reference.run(inputs, 3)
    layer = next(layer for layer, kept in natural.kept.items() if kept.size)
    same = reference.run(inputs, 3, kept=dict(natural.kept))
    np.testing.assert_array_equal(same.tokens, natural.tokens)
    np.testing.assert_allclose(same.step_logits, natural.step_logits, rtol=0, atol=1e-6)

    # swap the last kept token for the best-scoring one the cut dropped
    scores, budget, ids = natural.scores[layer][0]
    dropped = [int(i) for i in ids[0][np.argsort(-scores[0])] if i not in set(natural.kept[layer][0].tolist())]
    forced = np.sort(np.append(natural.kept[layer][0][:-1], dropped[0]))[None]
    swapped = reference.run(inputs, 3, kept={layer: forced})
    np.testing.assert_array_equal(swapped.kept[layer], forced)
    assert swapped.presents[f"present.{layer}.key"].shape == natural.presents[f"present.{layer}.key"].shape
    assert not np.allclose(swapped.presents[f"present.{layer}.key"], natural.presents[f"present.{layer}.key"])
    # the layers before the cut saw the same tokens
    np.testing.assert_allclose(swapped.presents["present.0.key"], natural.presents["present.0.key"], atol=1e-6)
    assert reference.run(inputs, 3).kept[layer].tolist() == natural.kept[layer].tolist()  # the hooks are gone
