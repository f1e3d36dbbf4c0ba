"""Artifact folders written under a temporary name and renamed when complete, and one writer per folder."""

import json
import os
import signal
import subprocess
import sys

import pytest

from luvc.errors import LuvcError
from luvc.staging import OutputKind, output_claim, staged_folder
from tests.conftest import leftovers

REPORT = OutputKind("a test report", "report.json", "test/report")


def _report(folder, format_="test/report") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"format": format_}))


def test_overwrite_replaces_only_after_success(tmp_path):
    out = tmp_path / "artifact"
    _report(out)
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(out, True, REPORT) as staging:
        (staging / "new.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"] and (out / "old.txt").exists()
    with staged_folder(out, True, REPORT) as staging:
        _report(staging)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]
    assert [p.name for p in out.iterdir()] == ["report.json"]
    with pytest.raises(LuvcError, match="already exists"), staged_folder(out, False, REPORT):
        pass


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda out: (out.mkdir(), (out / "notes.txt").write_text("mine")), "a folder of the user's"),
        (lambda out: _report(out, "test/other"), "the marker of another kind"),
        (lambda out: (out.mkdir(), (out / "report.json").write_text("{ not json")), "a marker that is not JSON"),
        (lambda out: out.write_text("a file"), "a file"),
    ],
    ids=["user-folder", "other-kind", "broken-marker", "file"],
)
def test_overwrite_refuses_what_is_not_an_output_of_the_kind(make, why, tmp_path):
    out = tmp_path / "artifact"
    make(out)
    before = sorted(path.name for path in tmp_path.rglob("*"))
    with pytest.raises(LuvcError, match=r"is not a test report \(no luvc-export report.json in it\), so --overwrite"):
        with staged_folder(out, True, REPORT):
            pass
    assert sorted(path.name for path in tmp_path.rglob("*")) == before, why


@pytest.mark.parametrize("where", ["itself", "its parent", "inside it"])
def test_an_output_never_overlaps_the_commands_input(where, tmp_path):
    source = tmp_path / "export"
    _report(source)
    (source / "weights.bin").write_bytes(b"keep")
    out = {"itself": source, "its parent": tmp_path, "inside it": source / "report"}[where]
    with pytest.raises(LuvcError, match=f"overlaps this command's input {source}; choose an --out outside it"):
        with staged_folder(out, True, REPORT, inputs=(None, source)):
            pass
    assert (source / "weights.bin").read_bytes() == b"keep" and not (source / "report").exists()


def test_a_lock_held_by_a_live_process_refuses_and_a_dead_ones_does_not(tmp_path):
    from luvc.errors import LuvcError

    out = tmp_path / "artifact"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from luvc.staging import OutputKind, output_claim\n"
            f"with output_claim({str(out)!r}, False, OutputKind('a report', 'r.json')):\n"
            "    print('held', flush=True)\n    input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LuvcError, match=rf"being written by another luvc-export run \(pid {holder.pid}\)"):
        with output_claim(out, False, REPORT):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    with output_claim(out, False, REPORT):  # the kernel dropped the dead process's lock
        pass
    assert leftovers(tmp_path) == []
