"""The root CMakeLists.txt builds the plugin library against TensorRT 10.3 and 11.1 headers; what it exports."""

import shutil
import subprocess

import pytest

from tests.plugins.conftest import ROOT, cmake

ENTRY_POINTS = {
    "getCreators",  # what IPluginRegistry::loadLibrary registers
    "setLoggerFinder",  # ... and requires
    "luvc_last_error",  # the C interface of the test harness
    "luvc_fields_round_trip",
    "luvc_ortho_merge_forward",
    "luvc_spectrum_prune_forward",
}


def _symbols(library, *flags) -> set[str]:
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) is not installed")
    out = subprocess.run(["nm", "-D", *flags, str(library)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


@pytest.mark.parametrize("version", ["10.3", "11.1"])
def test_library_exports_only_its_entry_points(plugin_builds, version):
    defined = _symbols(plugin_builds[version], "--defined-only")
    assert {name for name in defined if not name.startswith("_")} == ENTRY_POINTS
    undefined = _symbols(plugin_builds[version], "--undefined-only")
    # nothing from TensorRT's libraries: the same file loads into any TensorRT built from those headers
    assert not [name for name in undefined if "nvinfer" in name or "nvonnxparser" in name]


def test_missing_headers_are_named(tmp_path, plugin_builds):
    result = cmake(ROOT, tmp_path / "build", f"-DTensorRT_ROOT={tmp_path}", "-DTensorRT_INCLUDE_DIR=")
    assert result.returncode != 0
    assert "TensorRT headers not found" in result.stderr and "-DTensorRT_INCLUDE_DIR" in result.stderr


def test_unknown_gpu_preset_is_named(tmp_path, plugin_builds):
    result = cmake(ROOT, tmp_path / "build", "-DLUVC_GPU_TARGET=xavier")
    assert result.returncode != 0
    assert "LUVC_GPU_TARGET=xavier is not orin, thor or datacenter" in result.stderr
