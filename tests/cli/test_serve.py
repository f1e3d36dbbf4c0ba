"""``luvc-export serve`` as a user runs it: a real process that serves, stops cleanly on SIGTERM, and refuses bad
options with one line and exit code 2."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from luvc.cli.main import main


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_process(export_dir, port: int, *options: str, env: dict | None = None):
    """``luvc-export serve EXPORT_DIR --port PORT [options]`` as a child process (text pipes), killed if still running
    when the block ends."""
    command = [sys.executable, "-m", "luvc.cli.main", "serve", str(export_dir), "--port", str(port), *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def wait_for_health(port: int, timeout_s: float = 60) -> None:
    """Poll the server's /health on loopback until it answers ok."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                assert json.loads(response.read())["status"] == "ok"
                return
        except OSError:
            assert time.monotonic() < deadline, "the server did not answer /health"
            time.sleep(0.1)


def test_serve_answers_health_and_stops_on_sigterm(exports):
    port = free_port()
    with serve_process(exports("tiny-llava"), port) as process:
        banner = process.stdout.readline()
        assert banner.startswith(
            f"Serving tiny-llava (ort (CPUExecutionProvider) on cpu, no CUDA graphs, buckets 224x224) at "
            f"http://127.0.0.1:{port}/v1"
        )
        since_start, sessions = re.search(
            r"; ready in ([\d.]+) s \(sessions ([\d.]+) s\) since the process", banner
        ).groups()
        assert float(since_start) >= float(sessions) >= 0
        wait_for_health(port)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_serving_beyond_loopback_without_a_key_warns(exports):
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if key != "LUVC_API_KEY"}
    with serve_process(exports("tiny-llava"), port, "--host", "0.0.0.0", env=environment) as process:
        assert process.stdout.readline().startswith("Serving tiny-llava")
        warning = process.stderr.readline()
        assert warning.startswith("warning: serving on 0.0.0.0 without an API key") and "LUVC_API_KEY" in warning
        wait_for_health(port)  # bound to every interface: loopback reaches it, under any Host name
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0


def test_a_port_in_use_is_one_line_and_exit_code_2(exports, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(exports("tiny-llava")), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Cannot listen on 127.0.0.1:{port} (") and "pick another --port" in err
    assert err.count("\n") == 1


def test_bad_serve_options_are_refused(tmp_path, capsys):
    cases = [
        (["--allow-local-images", str(tmp_path / "none")], "--allow-local-images"),
        (["--max-queue", "0"], "--max-queue 0: let at least 1 request wait."),
        (["--max-body-bytes", "10"], "--max-body-bytes 10: allow at least 1024 bytes"),
        (["--capture-mib", "-1"], "--capture-mib -1: give 0 (capture nothing at start) or more MiB."),
        (["--request-timeout", "0"], "--request-timeout 0.0: give 0.001 to 86400 seconds."),
        (["--queue-timeout", "nan"], "--queue-timeout nan: give 0.001 to 86400 seconds."),
        (["--read-timeout", "0"], "--read-timeout 0.0: give 0.001 to 86400 seconds."),
        (["--drain-timeout", "-1"], "--drain-timeout -1.0: give 0 to 86400 seconds."),
        (["--api-key", " "], "The API key in --api-key cannot be sent by any client: it is empty"),
        (["--api-key", " key"], "cannot be sent by any client: it holds spaces"),  # a client strips them
        (["--api-key", "schlüssel"], "characters other than printable ASCII"),  # headers are latin-1 on the wire
        ([], f"{tmp_path} has no manifest.json"),
    ]
    for options, message in cases:
        assert main(["serve", str(tmp_path), "--port", str(free_port()), *options]) == 2
        assert message in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # nothing written


def test_an_unknown_provider_stops_serve_before_it_announces_itself(exports, capsys):
    """As `run` does: one line, exit 2, no "Serving ..." and no traceback."""
    argv = ["serve", str(exports("tiny-llava")), "--port", str(free_port()), "--providers", "BogusExecutionProvider"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Serving" not in captured.out and "Traceback" not in captured.err
    assert "ONNX Runtime here has no ['BogusExecutionProvider']" in captured.err and captured.err.count("\n") == 1
