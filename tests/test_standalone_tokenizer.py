"""``luvc.standalone_tokenizer``: an export's tokenizer read by ``tokenizers`` alone where the export checked that it
matches ``transformers``; the runtime then starts without importing ``transformers``."""

import dataclasses
import json
import subprocess
import sys

import pytest

from luvc.export.manifest import ExportManifest
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.prompt import Conversation, Turn
from luvc.runtime.options import GenerationOptions
from luvc.runtime.pipeline import Pipeline
from luvc.runtime.user_text import UserTextGuard
from luvc.standalone_tokenizer import (
    PROBE_TEXTS,
    StandaloneTokenizer,
    load_tokenizer,
    matches_transformers,
    transformers_tokenizer,
)
from tests.conftest import FAMILY_PARAMS

# texts of the test's own, none of them the check's probes
OWN_TEXTS = (
    "A cat sits on the mat . It is 3:45 pm , isn't it ?",
    "Café   naïve\r\n\tcoöperate",
    "¿Qué? ¡Sí! 你好，世界。 Привет",
    "   ",
    "x<y && y>z || !w",
    "robots 🤖 and brains 🧠",
)


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_every_familys_tokenizer_reads_standalone_as_transformers_reads_it(family, tmp_path):
    adapter = load_model(family)
    adapter.tokenizer.save_pretrained(tmp_path)
    assert matches_transformers(tmp_path, (adapter.template.text,))
    reference, standalone = transformers_tokenizer(tmp_path), StandaloneTokenizer(tmp_path)
    texts = [*OWN_TEXTS, adapter.template.text]
    assert not set(texts) & set(PROBE_TEXTS)
    expected = reference(texts, add_special_tokens=False)["input_ids"]
    assert standalone(texts, add_special_tokens=False)["input_ids"] == expected
    assert [standalone(text, add_special_tokens=False)["input_ids"] for text in texts] == expected
    every_id = sorted(reference.get_vocab().values())  # every token once, added and special ones included
    for skip in (True, False):
        expected_text = reference.decode(every_id, skip_special_tokens=skip)
        assert standalone.decode(every_id, skip_special_tokens=skip) == expected_text
    # what user text may hold is the same either way
    assert UserTextGuard.for_tokenizer(standalone, 64) == UserTextGuard.for_tokenizer(reference, 64)


def test_a_tokenizer_that_cleans_up_the_spaces_it_decodes_is_left_to_transformers(tmp_path):
    load_model("tiny-qwen2-vl").tokenizer.save_pretrained(tmp_path)
    assert matches_transformers(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    # transformers then turns "a ." into "a." after decoding; tokenizers alone does not
    config.update(
        clean_up_tokenization_spaces=True, clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True
    )
    config_path.write_text(json.dumps(config))
    assert not matches_transformers(tmp_path)
    (tmp_path / "tokenizer.json").unlink()  # a tokenizer with no file for the tokenizers library
    assert not matches_transformers(tmp_path)


@pytest.mark.parametrize(("tokenizer_class", "alike"), [("Qwen2Tokenizer", True), ("GemmaTokenizer", False)])
def test_a_tokenizer_class_that_builds_its_own_pipeline_is_left_to_transformers(tokenizer_class, alike, tmp_path):
    """transformers' GemmaTokenizer sets its own normalizer, BPE options and special tokens over these files, so
    tokenizers alone reads them otherwise; Qwen2Tokenizer takes the files' pipeline as it is."""
    load_model("tiny-qwen2-vl").tokenizer.save_pretrained(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "tokenizer_class": tokenizer_class}))
    assert type(transformers_tokenizer(tmp_path)).__name__ == tokenizer_class
    assert matches_transformers(tmp_path) is alike


def test_the_runtime_reads_by_transformers_what_the_export_did_not_check(tmp_path):
    load_model("tiny-qwen2-vl").tokenizer.save_pretrained(tmp_path / "tokenizer")
    assert isinstance(load_tokenizer(tmp_path, standalone=True), StandaloneTokenizer)
    assert not isinstance(load_tokenizer(tmp_path, standalone=False), StandaloneTokenizer)


CHILD = """
import json, sys
from luvc.images import synthetic_image
from luvc.runtime.options import GenerationOptions
from luvc.runtime.pipeline import Pipeline
pipeline = Pipeline(sys.argv[1])
pipeline.load()
done = pipeline.generate([synthetic_image(224, 224, 0)], [sys.argv[2]], GenerationOptions(6, stop_token_ids=()))
print(json.dumps({"transformers": "transformers" in sys.modules, "tokens": done.tokens.tolist(), "texts": done.texts}))
"""


def test_a_pipeline_on_a_checked_export_starts_without_transformers_and_answers_as_with_it(exports):
    folder = exports("tiny-qwen2-vl", "fp32")
    manifest = ExportManifest.load(folder)
    assert manifest.tokenizer_standalone
    prompt = "Describe the picture , please ."
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), prompt], capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    standalone = json.loads(done.stdout.strip().splitlines()[-1])
    assert standalone["transformers"] is False
    # the same export with its tokenizer read by transformers gives the same tokens and text
    with_transformers = Pipeline(folder, manifest=dataclasses.replace(manifest, tokenizer_standalone=False))
    options = GenerationOptions(6, stop_token_ids=())
    reference = with_transformers.generate([synthetic_image(224, 224, 0)], [prompt], options)
    assert not isinstance(with_transformers.tokenizer, StandaloneTokenizer)
    assert standalone["tokens"] == reference.tokens.tolist() and standalone["texts"] == reference.texts
    # a conversation renders its chat template through transformers, loaded on first use, alike
    conversation = Conversation((Turn("system", "Be brief."), Turn("user", prompt, visual=True)))
    pipeline = Pipeline(folder)
    assert isinstance(pipeline.tokenizer, StandaloneTokenizer)
    answer = pipeline.generate([synthetic_image(224, 224, 0)], [conversation], options)
    expected = with_transformers.generate([synthetic_image(224, 224, 0)], [conversation], options)
    assert answer.tokens.tolist() == expected.tokens.tolist() and answer.texts == expected.texts
    # a manifest written before the check is read as unchecked
    data = json.loads((folder / "manifest.json").read_text())
    del data["tokenizer_standalone"]
    assert ExportManifest.from_dict(data).tokenizer_standalone is False
