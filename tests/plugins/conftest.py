"""The plugin library built by the root CMakeLists.txt against TensorRT's public headers (10.3 as on JetPack 6,
and 11.1), once per test session. Skips with the reason when CMake, nvcc or the headers are not on this machine."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import made_once

ROOT = Path(__file__).resolve().parents[2]
# TensorRT's public headers (10.3 and 11.1, build-time only, never part of the project): LUVC_TENSORRT_HEADERS, else
# beside the checkout (../shared/third_party/tensorrt-headers, as CI provides them), else the workspace's copy
HEADER_PLACES = [
    Path(os.environ["LUVC_TENSORRT_HEADERS"]) if os.environ.get("LUVC_TENSORRT_HEADERS") else None,
    ROOT.parent / "shared" / "third_party" / "tensorrt-headers",
    Path("/work/shared/third_party/tensorrt-headers"),
]
HEADERS = next((place for place in HEADER_PLACES if place is not None and place.is_dir()), HEADER_PLACES[1])
NVCC = shutil.which("nvcc") or "/usr/local/bin/nvcc"
BUILDS = {"10.3": "orin", "11.1": "thor"}  # header version -> the GPU preset its build uses here
LIBRARY = "libluvc_trt_plugins.so"


def cmake(source: Path, build: Path, *options: str) -> subprocess.CompletedProcess:
    """Configure ``source`` into ``build`` with ``options``; the completed process (output captured)."""
    command = ["cmake", "-S", str(source), "-B", str(build), f"-DCMAKE_CUDA_COMPILER={NVCC}", *options]
    if shutil.which("ninja"):
        command += ["-G", "Ninja"]
    return subprocess.run(command, capture_output=True, text=True)


def _require_toolchain() -> None:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    if not Path(NVCC).is_file():
        pytest.skip(f"nvcc is not at {NVCC} (the CUDA toolkit compiles the plugin kernels)")
    if not HEADERS.is_dir():
        pytest.skip(f"TensorRT headers are not at {HEADERS} (set LUVC_TENSORRT_HEADERS)")


@pytest.fixture(scope="session")
def plugin_builds(tmp_path_factory) -> dict[str, Path]:
    """Header version -> the plugin library built against it."""
    _require_toolchain()
    libraries = {}
    for version, preset in BUILDS.items():

        def build_plugins(build: Path, version: str = version, preset: str = preset) -> None:
            configured = cmake(
                ROOT, build, f"-DTensorRT_INCLUDE_DIR={HEADERS / version / 'include'}", f"-DLUVC_GPU_TARGET={preset}"
            )
            assert configured.returncode == 0, configured.stdout + configured.stderr
            built = subprocess.run(["cmake", "--build", str(build), "-j", "2"], capture_output=True, text=True)
            assert built.returncode == 0, built.stdout + built.stderr

        libraries[version] = made_once(tmp_path_factory, f"plugins-{version}", build_plugins) / LIBRARY
    return libraries


@pytest.fixture(scope="session")
def plugin_library(plugin_builds) -> Path:
    """The library built against the newest headers."""
    return plugin_builds["11.1"]
