"""``run`` on the oldest releases a device's install admits (pyproject's base install and ``ort`` extra: PyTorch,
``transformers``, ONNX Runtime), in the ``.floor-env`` environment that ``.ci/run`` makes, answers as on the
exporter's newest ones: images, videos and both, sampled with a seed. What JetPack's own PyTorch wheel has is at least
this."""

import subprocess
import sys
from pathlib import Path

import pytest

from luvc.images import synthetic_image
from luvc.requirements import declared_specifier
from tests.conftest import write_clip

ROOT = Path(__file__).resolve().parents[2]
FLOOR_ENV = ROOT / ".floor-env"
FLOORS = {"torch": None, "transformers": None, "onnxruntime": "ort"}  # package: the extra that declares it
SETUP = (
    f"python -m venv {FLOOR_ENV} && {FLOOR_ENV}/bin/pip install torch==1.13.1 'numpy<2' "
    f"&& {FLOOR_ENV}/bin/pip install -e '{ROOT}[ort]' 'numpy<2' transformers==5.5.0 onnxruntime==1.25.0"
)


def _floor(package: str) -> str:
    """The lowest release of ``package`` the install declares (its ``>=`` bound)."""
    specifier = declared_specifier(package, FLOORS[package])
    return next(spec.version for spec in specifier if spec.operator == ">=")


FLOOR_PYTHON = FLOOR_ENV / "bin" / "python"


def _output(python: Path | str, argv: list[str]) -> str:
    result = subprocess.run(
        [str(python), "-m", "luvc.cli.main", *argv], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return next(line for line in result.stdout.splitlines() if line.startswith("Output:"))


@pytest.mark.skipif(not FLOOR_PYTHON.exists(), reason=f"no {FLOOR_ENV}; make it with: {SETUP}")
def test_run_on_the_floor_releases_answers_as_on_the_newest(video_exports, tmp_path):
    for package in FLOORS:
        version = subprocess.run(
            [str(FLOOR_PYTHON), "-c", f"import {package}; print({package}.__version__)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert version.startswith(_floor(package) + "."), f"{FLOOR_ENV} has {package} {version}, not the floor"
    folder, clip = str(video_exports("tiny-qwen2-vl")), str(write_clip(tmp_path / "clip.mp4"))
    image = tmp_path / "image.png"
    synthetic_image(256, 192, seed=2).save(image)
    sampled = ["--max-new-tokens", "8", "--temperature", "0.8", "--seed", "3", "--prompt", "Describe it."]
    for visuals in ([], ["--video", clip], ["--image", str(image), "--video", clip]):
        argv = ["run", folder, *visuals, *sampled]
        assert _output(FLOOR_PYTHON, argv) == _output(sys.executable, argv), visuals
