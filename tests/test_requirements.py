"""What each command needs installed, from the package's metadata: the base install for a device, extras for the
rest, one line naming what is missing and the fix."""

import importlib.metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from luvc import requirements
from luvc.cli.main import TOOLS, _tool_class
from tests.conftest import one_line_error

EXPORT_COMMANDS = {"generate", "export", "parity", "calibrate", "eval"}


def _installed(site: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A distribution's metadata as pip writes it (``NAME-VERSION.dist-info/METADATA``), in folder ``site``."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {requirement}" for requirement in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


@pytest.fixture
def device_site(tmp_path, monkeypatch):
    """A site folder first on ``sys.path`` with luvc-export's metadata (torch>=1.13 for a device, the export extra
    needing torch>=2.9 and a package that is not installed) and a given torch version."""

    def install(torch_version: str, numpy_version: str = "1.26.4") -> None:
        _installed(
            tmp_path,
            "luvc-export",
            "0.1.0",
            (
                "torch>=1.13",
                "numpy",
                'torch>=2.9; extra == "export"',
                'luvc-no-such-package>=1; extra == "export"',
                'luvc-export[export]; extra == "test"',
            ),
        )
        _installed(tmp_path, "torch", torch_version)
        _installed(tmp_path, "numpy", numpy_version)
        monkeypatch.syspath_prepend(str(tmp_path))

    return install


def test_this_environment_meets_every_extra_the_tests_install():
    assert requirements.unmet() == []
    assert requirements.unmet("export") == []
    assert requirements.unmet("serve") == []


def test_the_base_install_is_a_devices_and_the_exporters_floor_is_an_extra():
    declared = map(Requirement, importlib.metadata.requires(requirements.DISTRIBUTION))
    base = {requirement.name for requirement in declared if requirement.marker is None}
    assert "torch" in base and "transformers" in base
    # the graph tools, the model's weights loader and the report plots are not a device's business
    assert not base & {"onnxscript", "onnx-graphsurgeon", "polygraphy", "matplotlib", "rapidfuzz", "safetensors"}


def test_every_command_says_what_it_needs():
    installs = {name: _tool_class(name).install for name in TOOLS}
    assert {name for name, install in installs.items() if install == "export"} == EXPORT_COMMANDS
    assert installs["run"] == installs["triton"] == "base" and installs["serve"] == "serve"
    assert installs["build"] is installs["plan"] is installs["inspect"] is None  # they import no torch


def test_an_older_torch_stops_the_exporter_with_one_line_naming_the_extra(device_site, capsys, tmp_path):
    device_site("2.1.2")
    line = one_line_error(["export", "--model", "tiny-qwen2-vl", "--out", str(tmp_path / "out")], capsys)
    assert "torch>=2.9 (found 2.1.2)" in line
    assert "luvc-no-such-package>=1 (not installed)" in line
    assert "pip install -e '.[export]'" in line  # the brackets survive the console's markup
    assert not (tmp_path / "out").exists()


def test_a_torch_below_the_runtimes_floor_stops_run(device_site, capsys, tmp_path):
    device_site("1.12.1")
    line = one_line_error(["run", str(tmp_path), "--prompt", "hi"], capsys)
    assert "torch>=1.13 (found 1.12.1)" in line and "pip install -e ." in line


def test_a_jetson_pre_release_torch_counts_as_its_version(device_site):
    device_site("2.5.0a0+872d972e41.nv24.08")  # NVIDIA's JetPack 6 wheel: a pre-release that meets >=1.13
    assert requirements.unmet() == []
    # as pip judges it, 2.9.0a0 comes before 2.9: a pre-release of the exporter's floor does not meet it
    assert "torch>=2.9 (found 2.5.0a0+872d972e41.nv24.08)" in requirements.unmet("export")


def test_a_torch_built_for_numpy_1_beside_numpy_2_is_named_with_its_fix(device_site, capsys, tmp_path):
    device_site("2.1.2", numpy_version="2.1.0")
    line = one_line_error(["run", str(tmp_path), "--prompt", "hi"], capsys)
    assert "numpy<2 with torch 2.1.2 (found numpy 2.1.0" in line and "pip install 'numpy<2'" in line


def test_numpy_2_with_a_torch_built_for_it_is_no_conflict(device_site):
    device_site("2.3.0", numpy_version="2.1.0")
    assert requirements.conflicts() == []
