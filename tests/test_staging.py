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
ENGINE_BUNDLE = OutputKind("an engine bundle", "report.json", "test/engines")  # another kind of output


def _report(folder, format_="test/report") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"format": format_}))


def _names(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_overwrite_replaces_only_after_success(tmp_path):
    out = tmp_path / "artifact"
    with staged_folder(out, False, REPORT) as staging:
        _report(staging)
        (staging / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(out, True, REPORT) as staging:
        (staging / "new.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"] and (out / "old.txt").exists()
    with staged_folder(out, True, REPORT) as staging:
        _report(staging)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]
    assert _names(out) == [".luvc-files", "report.json"]  # old.txt was the earlier run's: gone with it
    with pytest.raises(LuvcError, match="already exists"), staged_folder(out, False, REPORT):
        pass


def test_overwrite_keeps_the_files_a_user_added_and_says_so(tmp_path, capsys):
    out = tmp_path / "artifact"
    with staged_folder(out, False, REPORT) as staging:
        _report(staging)
        (staging / "graph.onnx").write_text("first")
    (out / "notes.txt").write_text("mine")
    (out / "eval").mkdir()
    (out / "eval" / "results.csv").write_text("mine too")
    with staged_folder(out, True, REPORT) as staging:
        _report(staging)
        (staging / "graph.onnx").write_text("second")
    assert _names(out) == [".luvc-files", "eval/results.csv", "graph.onnx", "notes.txt", "report.json"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "graph.onnx").read_text() == "second"
    assert "kept eval/results.csv, notes.txt in" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]  # no .old- folder left


def test_overwrite_refuses_to_replace_a_file_the_user_added(tmp_path):
    out = tmp_path / "artifact"
    with staged_folder(out, False, REPORT) as staging:
        _report(staging)
    (out / "summary.md").write_text("my summary")
    with pytest.raises(LuvcError, match="holds summary.md, which luvc-export did not write and this run would replace"):
        with staged_folder(out, True, REPORT) as staging:
            _report(staging)
            (staging / "summary.md").write_text("the tool's")
    assert (out / "summary.md").read_text() == "my summary" and leftovers(tmp_path) == []


def test_an_output_under_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(LuvcError, match="a-file is a file, not a folder; choose an --out inside a folder"):
        with staged_folder(tmp_path / "a-file" / "sub", False, REPORT):
            pass


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda out: (out.mkdir(), (out / "notes.txt").write_text("mine")), r"is not a test report \(no luvc-export "),
        (lambda out: _report(out, "test/other"), "holds a report.json that is not a test report's"),
        (lambda out: (out.mkdir(), (out / "report.json").write_text("{ not json")), "holds a report.json that is not"),
        (lambda out: out.write_text("a file"), "is a file, not a test report"),
        (lambda out: _report(out, "test/engines"), "is an engine bundle, not a test report"),
        (lambda out: (_report(out.parent / "real"), out.symlink_to(out.parent / "real")), "is a link to .*real; "),
    ],
    ids=["user-folder", "other-kind", "broken-marker", "file", "known-kind", "link"],
)
def test_overwrite_refuses_what_is_not_an_output_of_the_kind_and_says_what_it_is(make, message, tmp_path):
    out = tmp_path / "artifact"
    make(out)
    before = sorted(path.name for path in tmp_path.rglob("*"))
    with pytest.raises(LuvcError, match=f"artifact {message}.*--overwrite"):
        with staged_folder(out, True, REPORT):
            pass
    assert sorted(path.name for path in tmp_path.rglob("*")) == before


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


def test_an_output_holding_the_working_folder_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "report"
    (out / "inside").mkdir(parents=True)
    (out / "report.json").write_text(json.dumps({"format": "test/report"}))
    monkeypatch.chdir(out / "inside")
    with pytest.raises(LuvcError, match=r"is a folder holding the one this runs in, which --overwrite would replace"):
        with output_claim(out, True, REPORT):
            pass
    assert leftovers(tmp_path) == [] and (out / "inside").is_dir()
