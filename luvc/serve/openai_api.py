"""The OpenAI chat-completions wire format: request validation, the image and prompt a request carries, and the
response and stream-chunk bodies.

A request carries at most one image, in a user message (none: a text-only request, which runs the export's text
prefill). One user message with the image alone is rendered in the export's prompt template
(as ``luvc-export run`` does); a system message, earlier turns or the image in an earlier user turn make a
``Conversation``, rendered by the export's chat template. Roles other than system, user and assistant are refused
rather than dropped. Images come as data URLs, or as local paths when the server allows a folder
(``--allow-local-images``); the server fetches nothing.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from luvc.errors import critical
from luvc.images import decode_image, load_image
from luvc.prompt import Conversation, Turn
from luvc.serve.batching import GenerationParams

MAX_STOP_STRINGS = 4  # as OpenAI's API


class ImageURL(BaseModel):
    url: str


class ContentPart(BaseModel):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class Message(BaseModel):
    role: str
    content: str | list[ContentPart]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields this server reads; others that clients commonly send are accepted and ignored, and those that
    would change the answer (``n`` > 1, ``logprobs``, tools, a response format, ``logit_bias``) are refused unless
    they ask for nothing."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list | None = None
    tool_choice: Any = None
    functions: list | None = None
    function_call: Any = None
    response_format: dict | None = None
    logit_bias: dict | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


# fields that change the answer and that this server does not implement: (name, what asks for nothing)
UNSUPPORTED_FIELDS = (
    ("top_logprobs", lambda value: not value),
    ("tools", lambda value: not value),
    ("tool_choice", lambda value: value in (None, "none")),
    ("functions", lambda value: not value),
    ("function_call", lambda value: value in (None, "none")),
    ("response_format", lambda value: value in (None, {"type": "text"})),
    ("logit_bias", lambda value: not value),
)


def parse_request(body: dict) -> ChatCompletionRequest:
    """Validate a request body; one line naming the first problem otherwise."""
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        critical(f"Invalid request: {where}: {first['msg']}.")
    if request.n != 1:
        critical(f"n={request.n}: this server returns one choice per request; send n=1 (or leave it out).")
    if request.logprobs:
        critical("logprobs are not returned by this server; leave logprobs out.")
    for name, asks_nothing in UNSUPPORTED_FIELDS:
        if not asks_nothing(getattr(request, name)):
            critical(f"{name} is not supported by this server and would change the answer; leave {name} out.")
    return request


def generation_params(request: ChatCompletionRequest, defaults: GenerationParams) -> GenerationParams:
    """Generation length, sampling and stop strings of ``request``; what it leaves out comes from ``defaults`` (the
    server's ``--max-new-tokens``, ``--temperature``, ``--top-k``, ``--top-p``, ``--seed`` and the penalties)."""
    max_tokens = next((n for n in (request.max_completion_tokens, request.max_tokens) if n is not None), None)
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    params = defaults.with_overrides(
        max_tokens,
        request.temperature,
        request.top_p,
        request.seed,
        stop or None,
        request.presence_penalty,
        request.frequency_penalty,
    )
    if len(params.stop) > MAX_STOP_STRINGS:
        critical(f"stop has {len(params.stop)} strings; give at most {MAX_STOP_STRINGS}.")
    return params


def _parts(message: Message) -> list[ContentPart]:
    return [ContentPart(type="text", text=message.content)] if isinstance(message.content, str) else message.content


def image_and_prompt(
    request: ChatCompletionRequest, image_folder: Path | None
) -> tuple[Image.Image | None, str | Conversation]:
    """The image of ``request`` (``None``: a text-only request) and its prompt: the user text of a single user
    message with the image, else the messages as a ``Conversation`` (the image's turn marked); local paths only
    inside ``image_folder``."""
    images = [(index, part.image_url) for index, m in enumerate(request.messages) for part in _parts(m)]
    images = [(index, url) for index, url in images if url is not None]
    if len(images) > 1:
        critical(f"The messages hold {len(images)} images; this export takes at most one image per request.")
    holder, url = images[0] if images else (None, None)
    if holder is not None and request.messages[holder].role != "user":
        critical(f"The image is in a {request.messages[holder].role} message; send it in a user message.")
    texts = ["\n".join(part.text for part in _parts(m) if part.type == "text" and part.text) for m in request.messages]
    if len(request.messages) == 1 and holder is not None:
        prompt: str | Conversation = texts[0]
    else:
        turns = [Turn(m.role, text, index == holder) for index, (m, text) in enumerate(zip(request.messages, texts))]
        prompt = Conversation(turns)
    return (None if url is None else load_request_image(url.url, image_folder)), prompt


def load_request_image(url: str, image_folder: Path | None) -> Image.Image:
    """An ``image_url``: a base64 data URL, or (when the server allows a folder) a path or ``file://`` URL in it."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.endswith(";base64"):
            critical("The image data URL is not base64; send data:image/png;base64,<data>.")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            critical("The image data URL holds invalid base64; send data:image/png;base64,<data>.")
        return decode_image(data, "the image_url data")
    if url.startswith(("http://", "https://")):
        critical("This server fetches no URLs; send the image as a base64 data URL (data:image/png;base64,...).")
    if image_folder is None:
        critical(
            "Local image paths are off; send the image as a base64 data URL, or start the server with "
            "--allow-local-images FOLDER."
        )
    path = Path(url.removeprefix("file://")).resolve()
    if not path.is_relative_to(image_folder.resolve()):
        critical(f"Image path {url!r} is outside the folder the server allows images from; send a data URL instead.")
    return load_image(path)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def usage_chunk_body(request_id: str, model: str, prompt_tokens: int, completion_tokens: int) -> dict:
    """The last chunk of a stream with ``stream_options.include_usage``: no choices, the request's usage."""
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion_body(
    request_id: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict:
    """A ``chat.completion`` response."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason},
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk_body(request_id: str, model: str, delta: dict, finish_reason: str | None = None) -> dict:
    """A ``chat.completion.chunk`` of a streamed response."""
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def error_body(message: str, kind: str = "invalid_request_error") -> dict:
    """OpenAI's error shape; the official client shows ``message``."""
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}
