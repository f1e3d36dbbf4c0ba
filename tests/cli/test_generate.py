import inspect
import re

import pytest

from luvc.cli import args as args_module
from luvc.cli.args.base import BaseArgs
from luvc.cli.main import main


def test_generate_prints_text_and_token_tables(capsys):
    assert main(["generate", "--model", "tiny-qwen2-vl", "--prompt", "What is here?", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "Output:" in out and "decoder layer 3" in out and "LLM prefill GFLOPs" in out
    row = re.search(r"decoder layer 3\s*│\s*(\d+)\s*│\s*(\d+)", out)
    assert row and int(row.group(1)) == 0 and int(row.group(2)) > 0


def test_generate_without_luvc_keeps_every_token(capsys):
    assert main(["generate", "--model", "tiny-llava", "--prompt", "hi", "--no-luvc", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    row = re.search(r"decoder layer 3\s*│\s*(\d+)\s*│\s*(\d+)", out)
    assert row and row.group(1) == row.group(2)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budgets", "10,20,0"], "must not increase"),
        (["--oim-layers", "9"], "outside the encoder"),
        (["--image", "/nonexistent.png"], "does not exist"),
        (["--option", "rho"], "KEY=VALUE"),
    ],
)
def test_generate_errors_name_the_fix(capsys, extra, message):
    assert main(["generate", "--model", "tiny-qwen2-vl", "--prompt", "hi", *extra]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")


def test_unreadable_image(capsys, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["generate", "--model", "tiny-qwen2-vl", "--prompt", "hi", "--image", str(bad)]) == 2
    assert "Cannot read" in capsys.readouterr().err


def test_argument_group_docstrings():
    groups = [obj for _, obj in inspect.getmembers(args_module, inspect.isclass) if issubclass(obj, BaseArgs)]
    assert len(groups) >= 2
    for group in groups:
        if group is BaseArgs:
            continue
        doc = inspect.getdoc(group)
        assert re.match(r"^\w[\w ]*: \S", doc), group
        assert "Depends on:" in doc, group
