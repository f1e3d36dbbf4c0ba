"""Who may talk to the server and how much they may send, against a real server on loopback with raw HTTP and the
official ``openai`` client: the Host header, the API key, the content type, the body size, the docs."""

import http.client
import json
import socket
import time

import openai
import pytest

from luvc.serve.access import API_KEY_ENV, AccessPolicy, host_name
from tests.serve.conftest import MODEL, data_url, running_server

KEY = "sk-test-0123456789"


def request(base_url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """``(status, parsed JSON or None, headers)`` of one raw HTTP request (http.client sends the headers as given)."""
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        return response.status, parsed, dict(response.getheaders())
    finally:
        connection.close()


def completion_body(image) -> bytes:
    content = [{"type": "text", "text": "Describe."}, {"type": "image_url", "image_url": {"url": data_url(image)}}]
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2}).encode()


def test_the_policy_of_a_bind_address(monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert AccessPolicy.for_bind("127.0.0.1").hosts == ("localhost", "127.0.0.1", "::1")
    assert AccessPolicy.for_bind("0.0.0.0").hosts == ()  # every interface: any name reaches it
    assert AccessPolicy.for_bind("0.0.0.0", allowed_hosts=("gpu.example",)).hosts == ("0.0.0.0", "gpu.example")
    assert AccessPolicy.for_bind("10.0.0.5").hosts == ("10.0.0.5",)
    monkeypatch.setenv(API_KEY_ENV, KEY)
    assert AccessPolicy.for_bind("127.0.0.1").api_key == KEY
    assert AccessPolicy.for_bind("127.0.0.1", api_key="other").api_key == "other"
    assert [host_name(h) for h in ("localhost:8000", "[::1]:8000", "::1", "a.example")] == [
        "localhost",
        "::1",
        "::1",
        "a.example",
    ]


def test_a_foreign_host_header_is_refused(server):
    """DNS rebinding: a page on evil.example that resolves to 127.0.0.1 sends Host: evil.example."""
    base_url, service = server
    status, body, _ = request(base_url, "GET", "/v1/models", headers={"Host": "evil.example:8000"})
    assert status == 400 and "'evil.example' is not one this server answers to" in body["error"]["message"]
    assert request(base_url, "GET", "/v1/models", headers={"Host": "localhost:1234"})[0] == 200
    assert request(base_url, "GET", "/health")[0] == 200
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:  # HTTP/1.0 needs no Host header
        connection.sendall(b"GET /v1/models HTTP/1.0\r\n\r\n")
        answer = b"".join(iter(lambda: connection.recv(65536), b""))
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    message = json.loads(payload)["error"]["message"]
    assert message == "The request has no Host header; send Host: localhost (HTTP/1.1 requires one)."


def test_a_json_post_is_required(server, image):
    """A browser's cross-site 'simple' request (text/plain, form) cannot reach the model."""
    base_url, _ = server
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {} if content_type is None else {"Content-Type": content_type}
        status, body, _ = request(base_url, "POST", "/v1/chat/completions", completion_body(image), headers)
        assert status == 415 and "send the request as application/json" in body["error"]["message"], content_type


def test_docs_are_off_by_default(server):
    base_url, _ = server
    assert [request(base_url, "GET", path)[0] for path in ("/docs", "/redoc", "/openapi.json")] == [404] * 3


@pytest.fixture(scope="module")
def guarded(exports):
    """A server with an API key and a 512 KiB body limit."""
    with running_server(exports(MODEL), access=AccessPolicy(api_key=KEY, max_body_bytes=512 * 1024)) as running:
        yield running


def test_the_api_key_is_required_everywhere_but_health(guarded, image):
    base_url, service = guarded
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        status, body, response_headers = request(base_url, "GET", "/v1/models", headers=headers)
        assert status == 401 and "API key" in body["error"]["message"] and response_headers["www-authenticate"]
    assert request(base_url, "GET", "/metrics")[0] == 401
    assert request(base_url, "GET", "/health")[0] == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong").models.list()
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY)
    assert [model.id for model in client.models.list()] == [MODEL]
    content = [{"type": "text", "text": "Describe."}, {"type": "image_url", "image_url": {"url": data_url(image)}}]
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=2)
    assert reply.choices[0].message.content is not None


def test_two_authorization_headers_are_refused_whichever_comes_last(guarded):
    """A proxy that adds its own header must not let a wrong key through because the right one came second."""
    base_url, _ = guarded
    host, port = base_url.removeprefix("http://").split(":")
    for first, second in (("wrong", KEY), (KEY, "wrong"), (KEY, KEY)):
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.putrequest("GET", "/v1/models")
            connection.putheader("Authorization", f"Bearer {first}")
            connection.putheader("Authorization", f"Bearer {second}")
            connection.endheaders()
            response = connection.getresponse()
            body = json.loads(response.read())
        finally:
            connection.close()
        assert response.status == 400 and "one Authorization header" in body["error"]["message"]


def test_a_body_over_the_limit_is_refused_before_it_is_read(guarded, image):
    base_url, service = guarded
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    padding = json.dumps({"messages": "x" * (600 * 1024)}).encode()
    status, body, _ = request(base_url, "POST", "/v1/chat/completions", padding, auth)
    assert status == 413 and "--max-body-bytes" in body["error"]["message"]
    # without a Content-Length (chunked), the body is counted as it arrives
    chunks = (padding[i : i + 4096] for i in range(0, len(padding), 4096))
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v1/chat/completions", body=chunks, headers=auth, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "--max-body-bytes" in json.loads(response.read())["error"]["message"]
    connection.close()
    status, body, _ = request(base_url, "POST", "/v1/chat/completions", completion_body(image), auth)
    assert status == 200, body  # a request within the limit still gets its answer
    refused = service.metrics.exposition().decode()
    assert 'luvc_requests_total{outcome="body_too_large"} 2.0' in refused


def _closed_by_server(connection: socket.socket, within_s: float) -> bool:
    """Whether the server closes ``connection`` within ``within_s`` seconds (reads what it sends until then)."""
    connection.settimeout(within_s)
    try:
        while connection.recv(4096):
            pass
        return True
    except TimeoutError:
        return False


def test_slow_clients_lose_their_connection_or_get_408_and_others_are_answered(exports, image):
    with running_server(exports(MODEL), access=AccessPolicy(read_timeout_s=0.5), read_timeout_s=0.5) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        # a head that never ends, one byte every 0.2 s: closed at the head's deadline, not kept alive by the bytes
        trickling = socket.create_connection((host, int(port)))
        trickling.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(4):
            trickling.sendall(b"X")
            time.sleep(0.2)
        assert _closed_by_server(trickling, within_s=10)
        idle = [socket.create_connection((host, int(port))) for _ in range(20)]  # open, silent: all closed
        assert all(_closed_by_server(connection, within_s=10) for connection in idle)
        # a whole head, then a body that stops half-way: 408 naming the flag
        slow = socket.create_connection((host, int(port)))
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        slow.sendall(f"{head}Content-Length: 100\r\n\r\n".encode() + b'{"model":')
        slow.settimeout(10)
        answer = b""
        while b"--read-timeout" not in answer and (chunk := slow.recv(4096)):  # head and body may come apart
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ") and b"--read-timeout" in answer
        json_type = {"Content-Type": "application/json"}
        status, body, _ = request(url, "POST", "/v1/chat/completions", completion_body(image), json_type)
        assert status == 200 and body["choices"][0]["message"]["content"] is not None
