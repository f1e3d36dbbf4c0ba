"""Finding and starting a real ``tritonserver`` with the Python backend for the tests.

Where from, in order: ``$LUVC_TRITONSERVER`` (a ``tritonserver`` binary whose ``../backends`` holds the Python
backend, as in NGC containers; the model runs in this Python's environment); ``tritonserver`` on PATH; the server
inside the ``nvidia-pytriton`` wheel in the ``.triton-env`` environment at the repository root, which ``.ci/run``
makes. That environment holds luvc-export too, with numpy<2: the wheel's Python-backend stub is built against
NumPy 1 and misreads NumPy 2 arrays. The wheel keeps its stubs per Python version, so a backend folder is
assembled with the stub of that environment's Python.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRITON_ENV = ROOT / ".triton-env"
SETUP = (
    f"python -m venv {TRITON_ENV} && {TRITON_ENV}/bin/pip install nvidia-pytriton torch==2.13.0 "
    f"&& {TRITON_ENV}/bin/pip install -e '{ROOT}[ort,serve,openvino]' 'numpy<2'"
)


@dataclasses.dataclass(frozen=True)
class TritonInstall:
    """A server binary, the backend folder it loads the Python backend from, and the Python whose environment the
    model runs in (the repository is written by that Python, so its ``python_paths`` point there)."""

    binary: Path
    backends: Path
    python: str


def find_server(workdir: Path) -> TritonInstall | str:
    """Where a tritonserver is, or why none can run here (the reason a test skips with)."""
    explicit = os.environ.get("LUVC_TRITONSERVER") or shutil.which("tritonserver")
    if explicit:
        binary = Path(explicit)
        return TritonInstall(binary, binary.parent.parent / "backends", sys.executable)
    python = TRITON_ENV / "bin" / "python"
    wheels = sorted(TRITON_ENV.glob("lib/python3*/site-packages/pytriton/tritonserver"))
    if not python.is_file() or not wheels:
        return f"no tritonserver: set LUVC_TRITONSERVER, put tritonserver on PATH, or make {TRITON_ENV} ({SETUP})"
    check = subprocess.run([str(python), "-c", "import luvc.serve.triton"], capture_output=True, text=True)
    if check.returncode:
        return f"{TRITON_ENV} cannot import luvc-export ({check.stderr.strip().splitlines()[-1]}); {SETUP}"
    wheel = wheels[0]
    version = wheel.parents[2].name.removeprefix("python")  # lib/python3.X/site-packages/pytriton/tritonserver
    stub = wheel / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        return f"the nvidia-pytriton wheel has no Python-backend stub for Python {version}"
    ldd = subprocess.run(["ldd", str(stub)], capture_output=True, text=True).stdout.splitlines()
    missing = [line.split()[0] for line in ldd if "not found" in line]
    if missing:
        return f"the Python-backend stub for Python {version} cannot load {', '.join(missing)} on this machine"
    backends = workdir / "backends"
    (backends / "python").mkdir(parents=True, exist_ok=True)
    for source in (
        wheel / "backends" / "python" / "libtriton_python.so",
        wheel / "backends" / "python" / "triton_python_backend_utils.py",
        stub,  # a link, not a copy: the stub finds its bundled libraries relative to its real path
    ):
        link = backends / "python" / source.name
        if not link.exists():
            link.symlink_to(source)
    return TritonInstall(wheel / "bin" / "tritonserver", backends, str(python))


class RunningServer:
    """A ``tritonserver`` process on loopback ports; ``stop()`` ends it. ``log`` is its output file."""

    def __init__(self, install: TritonInstall, repository: Path, ports: tuple[int, int, int], log: Path):
        self.http, self.grpc, self.metrics = ports
        self.log = log
        command = [
            str(install.binary),
            f"--model-repository={repository}",
            f"--backend-directory={install.backends}",
            f"--http-port={self.http}",
            f"--grpc-port={self.grpc}",
            f"--metrics-port={self.metrics}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--allow-metrics=false",
        ]
        # the wheel's stub embeds the system's libpython and takes its standard library from the first python3 on
        # PATH: keep a pyenv or venv python3 (another patch release) from lending it a mismatched one
        environment = {**os.environ, "PATH": "/usr/bin:/bin"}
        self.process = subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=environment)

    def wait_ready(self, timeout: float = 180) -> bool:
        """True once the server says it is ready; False if it exits or the time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.25)
        return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
