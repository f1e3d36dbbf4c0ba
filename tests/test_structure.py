"""The structure bars of ``luvc/`` that no linter rule states as a count: module and function lengths, and how many
functions take more than five arguments (ruff's PLR0913, a ratchet: lower the bar when the count falls).

Complexity (C901, at most 12) is a ruff rule in pyproject.toml; the layer order is ``.importlinter``'s.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "luvc"
MODULE_LINES = 500
MODULE_LINES_BY_PACKAGE = {"calibration": 400}
FUNCTION_LINES = 80
MANY_ARGUMENTS_MAX = 35  # PLR0913 findings in luvc/


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_longer_than_its_bar():
    too_long = []
    for path in _modules():
        package = path.relative_to(PACKAGE).parts[0]
        bar = MODULE_LINES_BY_PACKAGE.get(package, MODULE_LINES)
        lines = len(path.read_text().splitlines())
        if lines > bar:
            too_long.append(f"{path.relative_to(PACKAGE.parent)}: {lines} lines (at most {bar})")
    assert not too_long, "\n".join(too_long)


def test_no_function_is_longer_than_80_lines():
    too_long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {lines} lines")
    assert not too_long, "\n".join(too_long)


def test_functions_with_more_than_five_arguments_stay_few():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (the test extra has it)")
    result = subprocess.run(
        [ruff, "check", str(PACKAGE), "--select", "PLR0913", "--output-format", "concise", "--no-cache", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    findings = [line for line in result.stdout.splitlines() if "PLR0913" in line]
    assert findings or result.returncode == 0, result.stderr
    assert len(findings) <= MANY_ARGUMENTS_MAX, "\n".join(findings)
