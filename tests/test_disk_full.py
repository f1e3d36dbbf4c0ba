"""A disk that fills up mid-write: one line naming the folder and the space left, exit code 2, no traceback, and
nothing left behind, from the graph workers or the exporter itself, calibrate and build (a real 600 KiB tmpfs)."""

import subprocess
import sys
import uuid

import pytest

from luvc.errors import disk_full_message


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KiB tmpfs mounted for the test (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip() or made.returncode}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "luvc.cli.main", *argv], capture_output=True, text=True, timeout=600)


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-2000:]
    return errors[0]


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [[], ["--jobs", "1"]])  # graph workers, and the exporter writing alone
def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(small_disk, jobs):
    out = small_disk / "out"
    line = _one_error_line(_cli("export", "--model", "tiny-qwen2-vl", "--out", str(out), *jobs))
    assert f"the disk under {out} ran out of space" in line and "MB free there now" in line
    assert list(small_disk.iterdir()) == []


@pytest.mark.slow
def test_calibrate_and_build_onto_a_full_disk(exports, small_disk):
    for command in (
        ["calibrate", str(exports("tiny-qwen2-vl")), "--precision", "int8w"],
        ["build", str(exports("tiny-llava")), "--target", "ada"],
    ):
        out = small_disk / command[0]
        line = _one_error_line(_cli(*command, "--out", str(out)))
        assert f"the disk under {out} ran out of space" in line, line
        assert list(small_disk.iterdir()) == []


def test_the_message_names_the_folder_and_what_is_free_there(tmp_path):
    error = OSError(28, "No space left on device")
    message = disk_full_message(error, tmp_path / "not-made-yet" / "out")  # measured on the nearest folder that is
    assert message.startswith(f"the disk under {tmp_path / 'not-made-yet' / 'out'} ran out of space")
    assert "MB free there now" in message and "write to another disk" in message
    named = OSError(28, "No space left on device", str(tmp_path / "weights.data"))  # no folder: the file's own
    assert f"the disk under {tmp_path}" in disk_full_message(named)
