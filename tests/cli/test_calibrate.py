import json

import pytest
from PIL import Image

from luvc.cli.main import main
from luvc.engines.manifest import EngineManifest


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_calibrate_from_a_folder_then_build(exports, tmp_path, capfd, caplog):
    data = tmp_path / "data"
    data.mkdir()
    for index in range(2):
        Image.new("RGB", (300, 280), (60 * index, 120, 200)).save(data / f"img{index}.png")
    out = tmp_path / "int8"
    argv = ["calibrate", str(exports("tiny-llava")), "--data", str(data), "--method", "percentile", "--out", str(out)]
    assert main(argv) == 0
    printed = capfd.readouterr()
    assert "top1_agreement vs the fp32 source" in printed.out
    assert "onnxruntime" not in printed.err  # the calibration sessions' warnings stay out of the user's terminal
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]  # and the quantizer's advice
    assert "decode_logits_cosine_min vs the fp32 source" in printed.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["calibration"]["samples"] == ["img0.png", "img1.png"]
    assert manifest["quantization"]["method"] == "percentile"
    assert {"report.md", "ranges.png", "ranges.json", "calibration"} <= set(_entries(out))
    # the llava export keeps its weights outside the graphs: the calibrated graphs share one file, embed included
    assert [p.name for p in out.glob("*.data")] == ["weights.data"]
    assert all(graph["external_data"] == ["weights.data"] for graph in manifest["graphs"].values())
    assert main(["inspect", str(out)]) == 0
    shown = capfd.readouterr().out
    assert "quantized: int8 (percentile" in shown and "top1_agreement vs the fp32 source" in shown
    assert "kept in float" in shown and "SPU scoring and selection" in shown
    engines = tmp_path / "engines"
    assert main(["build", str(out), "--target", "ada", "--out", str(engines)]) == 0
    assert EngineManifest.load(engines).precision == "int8"


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        ("empty", [], "holds no image"),
        ("unreadable", [], "Cannot read"),
        ("empty", ["--precision", "fp8", "--method", "entropy"], "pass --method distribution"),
        ("empty", ["--precision", "int4", "--method", "minmax"], "pass --method gptq"),
        ("empty", ["--precision", "int8", "--block-size", "64"], "Pass --precision int4"),
        ("empty", ["--precision", "int8w", "--block-size", "64"], "Pass --precision int4"),  # one scale a column
        ("empty", ["--precision", "int8w", "--method", "gptq"], "pass --method rtn"),
        ("empty", ["--precision", "int4", "--block-size", "48"], "not a power of two"),
        ("empty", ["--precision", "int4", "--block-size", "8"], "at least 16"),
    ],
)
def test_bad_calibration_input_is_named_and_leaves_nothing(exports, tmp_path, capsys, setup, extra, message):
    data = tmp_path / "data"
    data.mkdir()
    if setup == "unreadable":
        (data / "photo.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out"
    argv = ["calibrate", str(exports("tiny-qwen2-vl")), "--data", str(data), "--out", str(out), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert _entries(tmp_path) == ["data"]


def test_calibrate_refuses_an_fp16_export(exports, tmp_path, capsys):
    assert main(["calibrate", str(exports("tiny-qwen2-vl", "fp16")), "--out", str(tmp_path / "out")]) == 2
    assert "--precision fp32" in capsys.readouterr().err


def test_a_failure_mid_calibration_leaves_nothing_half_written(exports, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("luvc.calibration.calibrated_export.write_report", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        main(["calibrate", str(exports("tiny-qwen2-vl")), "--out", str(tmp_path / "out")])
    assert _entries(tmp_path) == []


def test_calibrate_refuses_a_taken_output_folder_before_calibrating(exports, tmp_path, capsys, monkeypatch):
    out = tmp_path / "int8"
    out.mkdir()

    def must_not_run(*args, **kwargs):
        raise AssertionError("calibration ran although the output folder was taken")

    monkeypatch.setattr("luvc.calibration.qdq_calibrator.collect_feeds", must_not_run)
    assert main(["calibrate", str(exports("tiny-qwen2-vl")), "--out", str(out)]) == 2
    assert "already exists; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert _entries(out) == []


@pytest.mark.slow
def test_a_target_search_killed_with_kill_9_never_breaks_another_calibration_of_its_source(tmp_path, capsys):
    """Issue 77: a search killed while its hard link to the source's weights.data existed made every later
    calibration of that source fail (onnx refuses a weights file with several hard links), whatever its --out. The
    next command cleans what the dead run left: the link, its partial folder and its lock."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from luvc.export.exporter import export_model
    from luvc.export.profile import ExportProfile
    from luvc.models import load_model

    profile = ExportProfile(image_sizes=((224, 224),), external_data="always")
    source = export_model(load_model("tiny-llava"), tmp_path / "fp32", profile, show_progress=False)
    weights = source / "weights.data"
    searched = tmp_path / "searched"
    argv = ["calibrate", str(source), "--out", str(searched), "--target-agreement", "0.99999", "--decode-steps", "1"]
    temporary = tmp_path / "tmp"  # the run's temporary folder: a killed run leaves nothing in it either
    temporary.mkdir()
    environment = {**os.environ, "TMPDIR": str(temporary)}
    run = subprocess.Popen(
        [sys.executable, "-m", "luvc.cli.main", *argv], stderr=subprocess.PIPE, text=True, env=environment
    )
    deadline = time.monotonic() + 300
    while weights.stat().st_nlink < 2:  # the search's link beside its scratch export
        assert run.poll() is None, f"the search ended before it linked the source: {run.communicate()[1]}"
        assert time.monotonic() < deadline, "timed out waiting for the search"
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    assert weights.stat().st_nlink == 2 and list(tmp_path.glob(".searched.*"))
    assert [path.name for path in temporary.iterdir() if path.is_dir()] == []  # (a library leaves a marker file)
    shutil.rmtree(temporary)
    out = tmp_path / "int8w"
    assert main(["calibrate", str(source), "--out", str(out), "--precision", "int8w", "--decode-steps", "1"]) == 0
    assert f"a partial folder left by an interrupted run (pid {run.pid})" in capsys.readouterr().err
    assert weights.stat().st_nlink == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["fp32", "int8w"]


@pytest.mark.parametrize("precision", ["int8", "int8w"])
def test_a_source_whose_weights_have_other_hard_links_is_refused_in_one_line(
    copied_export, tmp_path, capsys, precision
):
    """A copy made with ``cp -al`` shares weights.data by a hard link; onnx refuses to read such a file (a traceback
    naming a 'hardlink attack' after the calibration runs, before), so calibrate says so before any work."""
    import os
    import shutil

    original = copied_export("tiny-llava")  # its weights in weights.data; a copy, so the shared export keeps one link
    source = tmp_path / "linked"
    shutil.copytree(original, source, copy_function=os.link)  # what `cp -al` makes
    out = tmp_path / precision
    assert main(["calibrate", str(source), "--out", str(out), "--precision", precision, "--decode-steps", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "Traceback" not in error and "calibrating" not in error
    assert f"{source / 'weights.data'} has 2 hard links" in error and "copy the export with `cp -r` instead" in error
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([original.name, "linked"])
