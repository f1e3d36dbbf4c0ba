"""The access-log middleware around a plain ASGI app: one line per request, ids made or kept, fields recorded by the
app, and nothing a client sends can break a line."""

import asyncio
import logging

from luvc.serve.access_log import AccessLogMiddleware, record


def _call(app, path: str, method: str = "GET") -> list[dict]:
    """The messages ``app`` sends for one request to ``path``."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(app(scope, receive, send))
    return sent


async def answer(scope, receive, send, headers=()):
    record(scope, completion_tokens=3, bucket="224x224")
    await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
    await send({"type": "http.response.body", "body": b"{}"})


def test_a_request_gets_an_id_and_one_line_with_what_the_app_recorded(caplog):
    caplog.set_level(logging.INFO, logger="luvc.access")
    sent = _call(AccessLogMiddleware(answer), "/v1/models")
    request_id = dict(sent[0]["headers"])[b"x-request-id"].decode()
    (line,) = [record.getMessage() for record in caplog.records]
    assert line.startswith(f"{request_id} GET /v1/models 200 ") and request_id.startswith("req-")
    assert line.endswith(" completion_tokens=3 bucket=224x224")


def test_the_apps_own_request_id_is_kept(caplog):
    caplog.set_level(logging.INFO, logger="luvc.access")

    async def with_id(scope, receive, send):
        await answer(scope, receive, send, [(b"x-request-id", b"chatcmpl-abc")])

    sent = _call(AccessLogMiddleware(with_id), "/v1/chat/completions", "POST")
    assert [value for key, value in sent[0]["headers"] if key == b"x-request-id"] == [b"chatcmpl-abc"]
    assert caplog.records[0].getMessage().startswith("chatcmpl-abc POST /v1/chat/completions 200 ")


def test_a_path_cannot_forge_a_log_line(caplog):
    caplog.set_level(logging.INFO, logger="luvc.access")
    _call(AccessLogMiddleware(answer), "/health\nreq-forged GET /admin 200 " + "x" * 400)
    (line,) = [record.getMessage() for record in caplog.records]
    assert "\n" not in line and "/health\\nreq-forged%20GET%20/admin%20200%20x" in line
    assert "x" * 201 not in line  # cut at 200 characters


def test_a_client_that_leaves_before_an_answer_is_logged_without_a_status(caplog):
    caplog.set_level(logging.INFO, logger="luvc.access")

    async def silent(scope, receive, send):
        raise asyncio.CancelledError

    try:
        _call(AccessLogMiddleware(silent), "/v1/chat/completions", "POST")
    except asyncio.CancelledError:
        pass
    assert caplog.records[0].getMessage().startswith("- POST /v1/chat/completions - ")
