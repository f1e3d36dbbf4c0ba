"""The HTTP app of ``luvc-export serve`` (FastAPI): OpenAI-compatible ``/v1/chat/completions`` (plain and
server-sent events) and ``/v1/models``, ``/health`` and Prometheus ``/metrics``.

Status codes: 400 for a request the client can fix (the message is the one the CLI prints for the same problem),
401 without the API key, 404 for another model name, 413 for a body over the limit, 415 for a body that is not JSON,
429 when the wait queue is full, 500 for an internal error, 503 while not serving. ``luvc.serve.access`` checks the
Host header, the key, the content type and the body size before the app reads a byte; ``/docs`` is off unless asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from luvc.errors import LuvcError
from luvc.runtime.options import GenerationOptions
from luvc.runtime.pipeline import Prepared
from luvc.serve import openai_api
from luvc.serve.access import AccessMiddleware, AccessPolicy
from luvc.serve.access_log import AccessLogMiddleware, record
from luvc.serve.batching import Delta, Event, Failed, Finished, Job, QueueClosed, QueueFull, internal_error_message
from luvc.serve.service import GenerationService

RETRY_AFTER_S = 1  # what a 429 asks a client to wait: the queue moves a batch at a time
RETRY = {"Retry-After": str(RETRY_AFTER_S)}  # the header of a response that asks the client to come back
Admitted = tuple[openai_api.ChatCompletionRequest, GenerationOptions, Prepared]  # a request, its options, its batch


def create_app(
    service: GenerationService,
    model_name: str,
    access: AccessPolicy | None = None,
    request_timeout_s: float | None = None,
    lenient: bool = False,
) -> FastAPI:
    """An app serving ``service`` under ``model_name`` to whom ``access`` lets in (default: loopback callers, no key);
    a request still unanswered ``request_timeout_s`` after it was queued is cancelled (408, or an error event in a
    stream); ``lenient`` ignores request fields the server does not know, and contradicting ones, where it would
    refuse them (``openai_api.parse_request``). The service starts and stops with the app."""
    access = access or AccessPolicy()
    docs: dict[str, Any] = {} if access.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="luvc-export", lifespan=_lifespan(service), **docs)
    _add_middleware(app, service, access)
    routes = _Routes(service, model_name, request_timeout_s, lenient)
    app.add_api_route("/health", routes.health, methods=["GET"])
    app.add_api_route("/metrics", routes.metrics, methods=["GET"])
    app.add_api_route("/v1/models", routes.models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id:path}", routes.model, methods=["GET"])
    app.add_api_route("/v1/chat/completions", routes.chat_completions, methods=["POST"])
    return app


def _lifespan(service: GenerationService):
    """The app's lifespan: the service's worker runs while the app serves."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    return lifespan


def _add_middleware(app: FastAPI, service: GenerationService, access: AccessPolicy) -> None:
    """The access policy's checks, and outside them the access log (so that its refusals are logged too)."""
    app.add_middleware(
        AccessMiddleware, policy=access, refused=lambda reason: service.metrics.requests.labels(reason).inc()
    )
    app.add_middleware(AccessLogMiddleware)


class _Routes:
    """The app's endpoints, on ``service`` under ``model_name``."""

    def __init__(
        self, service: GenerationService, model_name: str, request_timeout_s: float | None, lenient: bool
    ) -> None:
        self.service, self.model_name, self.request_timeout_s = service, model_name, request_timeout_s
        self.lenient = lenient
        created = int(time.time())
        self.model_card = {"id": model_name, "object": "model", "created": created, "owned_by": "luvc-export"}

    def refuse(
        self, status: int, message: str, outcome: str, kind: str = "invalid_request_error", headers: dict | None = None
    ) -> JSONResponse:
        """An OpenAI-style error response, counted under ``outcome``."""
        self.service.metrics.requests.labels(outcome).inc()
        return JSONResponse(openai_api.error_body(message, kind), status_code=status, headers=headers)

    def no_such_model(self, name: str) -> str:
        return f"The model {name!r} does not exist here; this server serves {self.model_name!r}."

    async def health(self) -> JSONResponse:
        service = self.service
        if service.healthy:
            return JSONResponse({"status": "ok", "model": self.model_name, "waiting": len(service.queue)})
        return JSONResponse({"status": "unavailable"}, status_code=503)

    async def metrics(self) -> Response:
        return Response(self.service.metrics.exposition(), media_type="text/plain; version=0.0.4")

    async def models(self) -> dict:
        return {"object": "list", "data": [self.model_card]}

    async def model(self, model_id: str) -> JSONResponse:
        if model_id != self.model_name:
            body = openai_api.error_body(self.no_such_model(model_id), "model_not_found")
            return JSONResponse(body, status_code=404)
        return JSONResponse(self.model_card)

    async def chat_completions(self, http: Request) -> Response:
        """A chat completion: checked and prepared, queued, then answered whole or streamed."""
        admitted = await self._prepare(http)
        if isinstance(admitted, Response):
            return admitted
        request, options, prepared = admitted
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        try:
            job = self.service.submit(
                prepared, options, lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
            )
        except QueueFull as error:
            return self.refuse(429, str(error), "overloaded", "rate_limit_exceeded", RETRY)
        except QueueClosed as error:
            return self.refuse(503, str(error), "shutting_down", "server_error", RETRY)
        request_id = openai_api.completion_id()
        answer = Answer(
            job,
            events,
            request_id,
            {**fit_headers(prepared), "X-Request-ID": request_id},
            functools.partial(record, http.scope),
        )
        answer.note(bucket=prepared.bucket_name, prompt_tokens=prepared.prompt_tokens, stream=bool(request.stream))
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            stream = _sse(answer, self.model_name, self.service, include_usage, self.request_timeout_s)
            return StreamingResponse(stream, media_type="text/event-stream", headers=answer.headers)
        return await self._answer(http, answer)

    async def _prepare(self, http: Request) -> Admitted | Response:
        """The request, its generation options and its prepared batch; or the error response that refuses it."""
        try:
            body = openai_api.parse_json(await http.body())
            request = openai_api.parse_request(body, self.lenient)
            if request.model not in (None, "", self.model_name):
                return self.refuse(404, self.no_such_model(request.model), "bad_request", "model_not_found")
            options = openai_api.generation_options(request, self.service.defaults)
            self.service.check_max_new_tokens(options.max_new_tokens, openai_api.max_tokens_field(request))
            image, prompt = await run_in_threadpool(
                openai_api.image_and_prompt, request, self.service.image_folder, self.lenient
            )
            prepared = await run_in_threadpool(self.service.prepare, image, prompt, options)
        except LuvcError as error:
            return self.refuse(400, str(error), "bad_request")
        except Exception:  # e.g. a decoder bug on a hostile image: the client gets an id, the log the traceback
            message = internal_error_message("preparing a request")
            return self.refuse(500, message, "failed", "server_error")
        return request, options, prepared

    async def _answer(self, http: Request, answer: Answer) -> Response:
        """The whole answer of a plain (not streamed) request once its job ends."""
        job, headers = answer.job, answer.headers
        timeout_s = self.request_timeout_s
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            event = await _final_event(answer.events, http, deadline)
        except asyncio.CancelledError:
            job.cancel()
            raise
        if event is None:  # the client gave up: its row is dropped at the next token (or before it starts)
            job.cancel()
            self.service.metrics.requests.labels("cancelled").inc()
            return Response(status_code=499)
        if event is DEADLINE:
            job.cancel()
            return self.refuse(408, _deadline_message(timeout_s), "deadline", "timeout", headers)
        if isinstance(event, Failed):
            status = {"request": 400, "unavailable": 503}.get(event.kind, 500)
            kind = "invalid_request_error" if event.kind == "request" else "server_error"
            if event.kind == "unavailable":
                headers.update(RETRY)
            return self.refuse(
                status, event.message, "unavailable" if event.kind == "unavailable" else "failed", kind, headers
            )
        self.service.metrics.requests.labels("ok").inc()
        answer.note(**_finished_fields(event))
        body = openai_api.completion_body(
            answer.request_id,
            self.model_name,
            event.text,
            event.finish_reason,
            event.prompt_tokens,
            event.completion_tokens,
        )
        return JSONResponse(body, headers=headers)


@dataclasses.dataclass(frozen=True)
class Answer:
    """What answering one request is made of: its job, the queue of the job's events, the request id, the response
    headers and ``note``, which adds fields to the request's access-log line."""

    job: Job
    events: asyncio.Queue
    request_id: str
    headers: dict[str, str]
    note: Callable[..., None]


def fit_headers(prepared: Prepared) -> dict[str, str]:
    """What the server did with the request's image, for clients that care (OpenAI clients ignore them):
    ``X-LUVC-Bucket`` (the bucket it ran in, ``text`` without an image) and ``X-LUVC-Fit`` (the change made to fit
    it, or ``none``)."""
    return {"X-LUVC-Bucket": prepared.bucket_name, "X-LUVC-Fit": prepared.fit_change or "none"}


DEADLINE = Failed("deadline")  # what _final_event and _next_event give once the request's deadline has passed


def _deadline_message(timeout_s: float | None) -> str:
    return (
        f"The request took over {timeout_s:g} s (the server's --request-timeout) and was stopped; ask for fewer "
        "tokens or retry later."
    )


async def _next_event(events: asyncio.Queue, deadline: float | None, poll_s: float) -> Event | None:
    """The job's next event within ``poll_s`` seconds (``None`` if none came), or ``DEADLINE`` once it has passed."""
    wait = poll_s if deadline is None else min(poll_s, deadline - time.monotonic())
    if wait <= 0:
        return DEADLINE
    try:
        return await asyncio.wait_for(events.get(), timeout=wait)
    except asyncio.TimeoutError:  # noqa: UP041 - on Python 3.10 not yet the builtin TimeoutError
        return None


async def _final_event(
    events: asyncio.Queue, http: Request, deadline: float | None = None, poll_s: float = 0.25
) -> Finished | Failed | None:
    """The job's last event, ``DEADLINE`` once ``deadline`` (monotonic) has passed, or ``None`` once the client has
    disconnected (checked every ``poll_s`` seconds)."""
    while True:
        event = await _next_event(events, deadline, poll_s)
        if event is None:
            if await http.is_disconnected():
                return None
            continue
        if isinstance(event, Finished | Failed):
            return event


def _finished_fields(event: Finished) -> dict[str, object]:
    """What the access log says of a finished completion."""
    return {
        "completion_tokens": event.completion_tokens,
        "finish_reason": event.finish_reason,
        "ttft_ms": round(event.time_to_first_token_s * 1e3, 1),
        "decode_ms": round(event.decode_s * 1e3, 1),
    }


async def _sse(
    answer: Answer, model: str, service: GenerationService, include_usage: bool, timeout_s: float | None = None
) -> AsyncIterator[str]:
    """Server-sent events of one streamed completion: the role, the text pieces, the finish reason, (with
    ``include_usage``) a chunk with the usage and no choices, ``[DONE]``; a failure after the stream began, or the
    request running past ``timeout_s``, is sent as an ``error`` event. A client that goes away cancels its job."""
    job, events, request_id, note = answer.job, answer.events, answer.request_id, answer.note
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def data(body: dict) -> str:
        return f"data: {json.dumps(body)}\n\n"

    outcome = "cancelled"  # until the stream ends one way or the other
    try:
        yield data(openai_api.chunk_body(request_id, model, {"role": "assistant", "content": ""}))
        while True:
            event = await _next_event(events, deadline, poll_s=3600.0)
            if event is None:
                continue
            if event is DEADLINE:
                yield data(openai_api.error_body(_deadline_message(timeout_s), "timeout"))
                outcome = "deadline"
                break
            if isinstance(event, Delta):
                yield data(openai_api.chunk_body(request_id, model, {"content": event.text}))
            elif isinstance(event, Finished):
                note(**_finished_fields(event))
                yield data(openai_api.chunk_body(request_id, model, {}, event.finish_reason))
                if include_usage:
                    usage = openai_api.usage_chunk_body(request_id, model, event.prompt_tokens, event.completion_tokens)
                    yield data(usage)
                outcome = "ok"
                break
            else:
                kind = "invalid_request_error" if event.kind == "request" else "server_error"
                yield data(openai_api.error_body(event.message, kind))
                outcome = "failed"
                break
        yield "data: [DONE]\n\n"
    finally:
        if outcome != "ok":
            job.cancel()
        service.metrics.requests.labels(outcome).inc()
        note(outcome=outcome)
