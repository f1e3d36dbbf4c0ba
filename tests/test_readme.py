"""The README's Python example runs as written (on the built-in tiny model) from the repository root."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_python_example_runs_on_the_tiny_model(monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Using it from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    assert '"path/to/Qwen2-VL-2B-Instruct"' in code
    monkeypatch.chdir(ROOT)  # its paths are relative to the checkout, as the README's commands are
    exec(compile(code.replace('"path/to/Qwen2-VL-2B-Instruct"', '"tiny-qwen2-vl"'), "README.md", "exec"), {})
    *text, speedup = capsys.readouterr().out.strip().splitlines()  # the (random-weight) text, then the cost model
    assert text and float(speedup) > 1.0
