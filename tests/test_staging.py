"""Artifact folders written under a temporary name and renamed when complete, and one writer per folder."""

import os
import signal
import subprocess
import sys

import pytest

from luvc.errors import LuvcError
from luvc.staging import output_claim, staged_folder
from tests.conftest import leftovers


def test_overwrite_replaces_only_after_success(tmp_path):
    out = tmp_path / "artifact"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"] and (out / "old.txt").exists()
    with staged_folder(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    with pytest.raises(LuvcError, match="already exists"), staged_folder(out, overwrite=False):
        pass


def test_a_lock_held_by_a_live_process_refuses_and_a_dead_ones_does_not(tmp_path):
    from luvc.errors import LuvcError

    out = tmp_path / "artifact"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from luvc.staging import output_claim\nwith output_claim({str(out)!r}, False):\n"
            "    print('held', flush=True)\n    input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LuvcError, match=rf"being written by another luvc-export run \(pid {holder.pid}\)"):
        with output_claim(out, False):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    with output_claim(out, False):  # the kernel dropped the dead process's lock
        pass
    assert leftovers(tmp_path) == []
