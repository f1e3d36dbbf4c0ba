import base64
import contextlib
import io
import socket
import threading
import time

import pytest

from luvc.runtime.options import GenerationOptions
from luvc.runtime.pipeline import Pipeline
from luvc.serve.service import GenerationService

MODEL = "tiny-qwen2-vl"


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


@contextlib.contextmanager
def running_server(
    export_dir,
    max_queue: int = 64,
    max_batch: int | None = None,
    image_folder=None,
    access=None,
    drain_timeout_s: float = 10.0,
    request_timeout_s: float | None = None,
    queue_timeout_s: float | None = None,
    read_timeout_s: float = 10.0,
    lenient: bool = False,
    backend: str = "ort",
):
    """``(base_url, service)`` of a real uvicorn server on a free loopback port, in a thread of this process
    (``access``: its ``AccessPolicy``, default loopback callers without a key; ``read_timeout_s``: the deadline for
    a request's head; ``lenient``: serve's ``--lenient``; ``backend``: the pipeline's)."""
    import uvicorn

    from luvc.serve.app import create_app

    service = GenerationService(
        Pipeline(export_dir, backend=backend),
        GenerationOptions(16),
        max_queue,
        max_batch,
        image_folder,
        queue_timeout_s,
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    from luvc.serve.server import DrainingServer

    config = uvicorn.Config(create_app(service, MODEL, access, request_timeout_s, lenient), log_level="warning")
    server = DrainingServer(config, service, drain_timeout_s, read_timeout_s)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", service
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def server(exports):
    with running_server(exports(MODEL)) as running:
        yield running
