"""Which model an export came from: architecture, sizes and weights (any transformers release), or for exports that
predate weight hashes the config hash, with or without the loading dtype."""

import dataclasses

import pytest

from luvc import LuvcError
from luvc.export.manifest import ExportManifest
from luvc.export.source import config_hash, same_source
from luvc.models import load_model
from luvc.parity.reference import TorchReference


def _with_model(manifest, **changes):
    return dataclasses.replace(manifest, model=dataclasses.replace(manifest.model, **changes))


def test_an_export_records_its_weights_and_is_accepted_whatever_config_text_a_release_wrote(exports):
    manifest = ExportManifest.load(exports("tiny-qwen2-vl"), verify=False)
    assert manifest.model.weights_sha256 is not None and len(manifest.model.weights_sha256) == 64
    another_release = _with_model(manifest, config_sha256="f" * 64)  # another release serialises the config anew
    assert TorchReference.from_manifest(another_release).adapter.name == "tiny-qwen2-vl"


@pytest.mark.parametrize("recorded", ["current", "with dtype (earlier versions)"])
def test_an_export_without_weight_hashes_is_matched_by_its_config(exports, recorded):
    manifest = ExportManifest.load(exports("tiny-qwen2-vl"), verify=False)
    identity = config_hash(load_model("tiny-qwen2-vl"), with_dtype=recorded != "current")
    legacy = _with_model(manifest, config_sha256=identity, weights_sha256=None)
    assert TorchReference.from_manifest(legacy).adapter.name == "tiny-qwen2-vl"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"weights_sha256": "0" * 64}, "its weights differ"),
        ({"architecture": "LlavaForConditionalGeneration"}, "it is a Qwen2VLForConditionalGeneration"),
        ({"weights_sha256": None, "config_sha256": "0" * 64}, "its config differs"),
    ],
)
def test_another_model_is_refused_with_the_reason(exports, change, reason):
    manifest = ExportManifest.load(exports("tiny-qwen2-vl"), verify=False)
    with pytest.raises(LuvcError, match="is not the one this export was made from") as error:
        TorchReference.from_manifest(_with_model(manifest, **change))
    assert reason in str(error.value)


def test_a_model_of_other_sizes_is_refused_naming_them(exports):
    manifest = ExportManifest.load(exports("tiny-qwen2-vl"), verify=False)
    geometry = dataclasses.replace(manifest.geometry, num_layers=28)
    with pytest.raises(LuvcError, match="num_layers 4, the export's 28"):
        TorchReference.from_manifest(dataclasses.replace(manifest, geometry=geometry))


def test_same_source_compares_weights_where_both_exports_have_them(exports):
    manifest = ExportManifest.load(exports("tiny-qwen2-vl"), verify=False)
    assert same_source(manifest, _with_model(manifest, config_sha256="f" * 64))
    assert not same_source(manifest, _with_model(manifest, weights_sha256="0" * 64))
    legacy = _with_model(manifest, weights_sha256=None)
    assert same_source(manifest, legacy) and not same_source(manifest, _with_model(legacy, config_sha256="0" * 64))


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
