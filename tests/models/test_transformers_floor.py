"""The PyTorch path on the oldest ``transformers`` the ``export`` extra admits (pyproject), in the
``.transformers-floor-env`` environment that ``.ci/run`` makes: the drop-in and golden tests pass there; ``generate``
answers as on the newest release; ``export``, ``run`` and ``parity`` work there, for one Qwen and one non-Qwen
family; and an export made under either release passes ``parity`` under the other."""

import subprocess
import sys
from pathlib import Path

import pytest

from luvc.images import synthetic_image
from luvc.requirements import declared_specifier

ROOT = Path(__file__).resolve().parents[2]
FLOOR_ENV = ROOT / ".transformers-floor-env"
FLOOR_PYTHON = FLOOR_ENV / "bin" / "python"
FAMILIES = ("tiny-qwen2-vl", "tiny-llava")


def declared_floor() -> str:
    """The lowest ``transformers`` release the ``export`` extra admits (its ``>=`` bound)."""
    return next(spec.version for spec in declared_specifier("transformers", "export") if spec.operator == ">=")


SETUP = (
    f"python -m venv {FLOOR_ENV} && {FLOOR_ENV}/bin/pip install torch==2.13.0 && {FLOOR_ENV}/bin/pip install "
    f"-e '{ROOT}[export,ort]' pytest 'transformers=={declared_floor()}.0'"
)
needs_floor = pytest.mark.skipif(not FLOOR_PYTHON.exists(), reason=f"no {FLOOR_ENV}; make it with: {SETUP}")


def _answer(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("Output:"))


def _cli(python: Path | str, argv: list[str], allowed: tuple[int, ...] = (0,)) -> str:
    result = subprocess.run(
        [str(python), "-m", "luvc.cli.main", *argv], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert result.returncode in allowed, f"luvc-export {argv[0]} under {python}: {result.stderr[-2000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def floor_version() -> str:
    found = subprocess.run(
        [str(FLOOR_PYTHON), "-c", "import transformers; print(transformers.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert found.startswith(declared_floor() + "."), f"{FLOOR_ENV} has transformers {found}, not the floor"
    return found


@needs_floor
def test_the_drop_in_and_the_goldens_pass_on_the_floor(floor_version):
    tests = ["tests/models/test_hf_generate.py", "tests/models/test_compat.py", "tests/test_golden.py"]
    result = subprocess.run(
        # one process (-o addopts=): this test already runs on one of the suite's workers
        [str(FLOOR_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-m", "not slow", *tests],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout.splitlines()[-1]


@needs_floor
@pytest.mark.parametrize("family", FAMILIES)
def test_generate_answers_on_the_floor_as_on_the_newest(floor_version, family):
    argv = ["generate", "--model", family, "--prompt", "Describe the image.", "--max-new-tokens", "8"]
    assert _cli(FLOOR_PYTHON, argv) == _cli(sys.executable, argv)


@needs_floor
@pytest.mark.parametrize("family", FAMILIES)
def test_export_run_and_parity_across_releases(floor_version, family, exports, tmp_path):
    """The floor exports; its export runs as the newest's and passes parity under the newest, as the newest's export
    does under the floor (so parity runs on the floor too: the floor's export under the floor would check nothing
    these two do not)."""
    floor_export = tmp_path / "floor"
    _cli(FLOOR_PYTHON, ["export", "--model", family, "--out", str(floor_export), "--image-size", "224x224"])
    newest_export = str(exports(family))
    image = tmp_path / "image.png"
    synthetic_image(224, 224, seed=2).save(image)
    run = ["--image", str(image), "--prompt", "Describe it.", "--max-new-tokens", "8", "--temperature", "0.8"]
    floor_answer = _answer(_cli(FLOOR_PYTHON, ["run", str(floor_export), *run, "--seed", "3"]))
    assert floor_answer == _answer(_cli(sys.executable, ["run", newest_export, *run, "--seed", "3"]))
    for python, folder in ((sys.executable, floor_export), (FLOOR_PYTHON, newest_export)):
        out = tmp_path / f"parity-{len(list(tmp_path.iterdir()))}"
        report = _cli(python, ["parity", str(folder), "--out", str(out), "--num-samples", "1"])
        assert report.strip().splitlines()[-2] == "PASSED", (python, folder, report[-1500:])
