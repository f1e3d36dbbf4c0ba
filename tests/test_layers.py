"""The layer order of ``luvc``'s packages and its import cycles, checked by import-linter from ``.importlinter``.

The contract file is the one statement of the order; these tests run it as CI does, and show it catches what it is
for: an import up the layers (also one inside a function) and a cycle between two modules of one package.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")

pytestmark = pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is not installed (the test extra has it)")


def _lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` over the ``luvc`` package under ``root``, with that folder's ``.importlinter``."""
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--config", str(root / ".importlinter")],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture()
def copied(tmp_path: Path) -> Path:
    """A copy of the package and its contract, to break on purpose."""
    shutil.copytree(ROOT / "luvc", tmp_path / "luvc", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def test_contracts_are_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_import_up_inside_a_function_breaks_the_layers(copied: Path):
    budgets = copied / "luvc" / "compress" / "budgets.py"
    budgets.write_text(budgets.read_text() + "\n\ndef _up():\n    from luvc.runtime import pipeline  # noqa: F401\n")
    result = _lint(copied)
    assert result.returncode == 1
    assert "luvc.compress is not allowed to import luvc.runtime" in result.stdout


def test_a_cycle_between_two_modules_of_one_package_is_found(copied: Path):
    # the cycle of issue 76: converter_settings imports decomposed_trace, which imported converter_settings back
    trace = copied / "luvc" / "export" / "decomposed_trace.py"
    trace.write_text(trace.read_text() + "\n\ndef _back():\n    from luvc.export import converter_settings  # noqa\n")
    result = _lint(copied)
    assert result.returncode == 1
    assert "No cycles are allowed in luvc.export" in result.stdout
