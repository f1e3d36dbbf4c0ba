"""The engine manifest's checks before an engine is used."""

import json
import shutil

import pytest

from luvc.engines.manifest import EngineManifest
from luvc.engines.trt_module import import_tensorrt
from luvc.errors import LuvcError
from luvc.export.manifest import ExportManifest

trt_rtx = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install tensorrt-rtx)")


def test_wrong_version_is_refused(engines, tmp_path):
    folder = shutil.copytree(engines[1], tmp_path / "engines")
    data = json.loads((folder / "manifest.json").read_text())
    data["tensorrt"]["version"] = "10.3.0"
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(LuvcError, match=r"built by tensorrt_rtx 10.3.0 but this process has tensorrt_rtx"):
        EngineManifest.load(folder).check_engine(folder, "decode", import_tensorrt("tensorrt_rtx"))


def test_engines_of_the_previous_format_are_refused_with_the_rebuild_line(engines, tmp_path, capsys):
    from luvc.cli.main import main

    folder = shutil.copytree(engines[1], tmp_path / "engines")
    data = json.loads((folder / "manifest.json").read_text())
    data["format_version"] = 2  # before weights were engine inputs
    for entry in data["engines"].values():
        del entry["weights"]
    (folder / "manifest.json").write_text(json.dumps(data))
    assert main(["plan", str(engines[0]), "--target", "80", "--engines", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "engine format v2 and this luvc-export reads v3; rebuild the engines" in err and err.count("\n") == 1


def test_wrong_compute_capability_is_refused(engines):
    manifest = EngineManifest.load(engines[1])
    tensorrt = import_tensorrt("tensorrt_rtx")
    assert manifest.check_engine(engines[1], "embed", tensorrt, device_capability=(8, 6))
    with pytest.raises(LuvcError, match=r"built for target ampere .* this GPU is SM 9.0"):
        manifest.check_engine(engines[1], "embed", tensorrt, device_capability=(9, 0))


def test_truncated_engine_is_refused(engines, tmp_path):
    folder = shutil.copytree(engines[1], tmp_path / "engines")
    path = folder / "prefill_224x224.engine"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(LuvcError, match="truncated or padded: 1000 bytes"):
        EngineManifest.load(folder).check_engine(folder, "prefill_224x224", import_tensorrt("tensorrt_rtx"))


def test_engine_from_another_export_is_refused(engines, exports):
    other = ExportManifest.load(exports("tiny-llava"))
    with pytest.raises(LuvcError, match="built from another export"):
        EngineManifest.load(engines[1]).check_engine(
            engines[1], "decode", import_tensorrt("tensorrt_rtx"), export=other
        )
