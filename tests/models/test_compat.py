"""The transformers shim: the supported range is pyproject's and is enforced in one line; every name a release changed
reaches the LUVC forwards (the cache under either keyword, the output fields upstream reads)."""

import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from packaging.requirements import Requirement

from luvc.errors import LuvcError
from luvc.models import ADAPTERS
from luvc.models.cache import LuvcCache
from luvc.models.compat import check_transformers, supported_range
from luvc.models.decoder import LuvcDecoderOutput

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "What is in this picture?"


def _pyproject_range(extra: str) -> str:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["optional-dependencies"][extra] if r.startswith("transformers")]
    return str(found[0].specifier)


def test_the_supported_range_is_the_export_extras():
    assert supported_range() == _pyproject_range("export")


def test_the_installed_transformers_is_in_the_supported_range():
    check_transformers()  # raises otherwise: CI must run on a release the package declares


@pytest.mark.parametrize("found", ["5.14.1", "5.25.0", "6.0.0"])
def test_a_release_outside_the_range_is_refused_with_the_fix(found):
    with pytest.raises(LuvcError) as error:
        check_transformers(found, ">=5.15,<5.25")
    message = str(error.value)
    assert "\n" not in message
    assert f"found {found}" in message and "transformers>=5.15,<5.25" in message
    assert f"{sys.executable} -m pip install 'transformers>=5.15,<5.25'" in message


@pytest.mark.parametrize("found", ["5.15.0", "5.24.0", "5.24.1"])
def test_a_release_inside_the_range_passes(found):
    check_transformers(found, ">=5.15,<5.25")


def test_the_cli_refuses_an_unsupported_transformers_in_one_line():
    script = (
        "import sys, transformers; transformers.__version__ = '9.0.0'; from luvc.cli.main import main; "
        "sys.exit(main(['generate', '--model', 'tiny-qwen2-vl', '--prompt', 'hi', '--max-new-tokens', '1']))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "found 9.0.0" in lines[0] and "Traceback" not in done.stderr


@pytest.mark.parametrize("architecture", sorted(ADAPTERS))
def test_luvc_output_has_every_field_upstream_reads(architecture):
    """What the installed release's ``...ForConditionalGeneration.forward`` reads from the multimodal model's output
    (``outputs.<field>``) must exist on ``LuvcDecoderOutput``: a release that adds one fails here, not in a forward."""
    source = inspect.getsource(getattr(transformers, architecture).forward)
    read = set(re.findall(r"\boutputs\.(\w+)", source))
    fields = {field.name for field in dataclasses.fields(LuvcDecoderOutput)}
    assert read, "the regex no longer finds what the forward reads"
    assert read <= fields, f"{architecture}.forward reads {sorted(read - fields)}"


@torch.no_grad()
@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_a_luvc_forward_fills_the_cache_given_under_either_name(adapter, image, name):
    adapter.apply_luvc()
    inputs = adapter.prepare_inputs([image], PROMPT)
    cache = LuvcCache()
    adapter.model.model(**inputs, use_cache=True, **{name: cache})
    assert cache.num_positions == inputs["input_ids"].shape[1]
    assert cache.get_seq_length() > 0 and min(cache.layer_lengths()[-1:]) > 0  # Qwen3.5's last layer attends


@torch.no_grad()
def test_a_luvc_forward_refuses_two_caches(adapter, image):
    adapter.apply_luvc()
    inputs = adapter.prepare_inputs([image], PROMPT)
    with pytest.raises(ValueError, match="once"):
        adapter.model.model(**inputs, use_cache=True, cache=LuvcCache(), past_key_values=LuvcCache())
