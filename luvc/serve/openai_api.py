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
import json
import os
import re
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from luvc.errors import critical
from luvc.images import decode_image, image_format, load_image
from luvc.prompt import ROLES, Conversation, Turn, role_of
from luvc.runtime.options import GenerationOptions
from luvc.runtime.user_text import lone_surrogate

PART_FIELDS = {"text": {"type", "text"}, "image_url": {"type", "image_url"}}  # OpenAI's content parts
IMAGE_URL_FIELDS = {"url", "detail"}
IMAGE_DETAILS = ("auto", "low", "high")  # OpenAI's image_url.detail: how finely to look (this server: its bucket)
MESSAGE_FIELDS = {"role", "content", "name"}  # OpenAI's message fields this server takes (``name`` is ignored)


class ImageURL(BaseModel):
    url: str


class ContentPart(BaseModel):
    """One checked content part (``content_parts``): a text part with its text, or an image part with its URL."""

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class Message(BaseModel):
    model_config = ConfigDict(strict=True)

    role: str
    # as sent: a string or a list of parts; after parse_request, the checked list[ContentPart] (content_parts gives
    # clearer errors than a pydantic union's)
    content: Any


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields this server reads. Of the others, those that cannot change the answer (``IGNORED_FIELDS``) are
    accepted and ignored, those that would (``n`` > 1, ``logprobs``, tools, a response format, ``logit_bias``) are
    refused unless they ask for nothing, and any other is refused as OpenAI does (``parse_request``). Types are
    strict, as OpenAI's schema: ``true`` is no number, ``"5"`` no integer."""

    model_config = ConfigDict(extra="ignore", strict=True)

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


# fields OpenAI's API takes that cannot change this server's answer: accepted and ignored
IGNORED_FIELDS = frozenset(
    {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key", "safety_identifier"}
)
MAX_SHOWN_NAME = 64  # a client's field name is echoed at most this long

MAX_JSON_DEPTH = 32  # a chat completion request nests 6 deep; far deeper is no request, and would exhaust the parser
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # strings (skipped whole) and brackets


def parse_json(data: bytes) -> Any:
    """A request body as JSON; one line when it is not JSON, or nests deeper than ``MAX_JSON_DEPTH`` (checked on the
    bytes first: ``json.loads`` recurses per level and a body 100,000 levels deep ends in a RecursionError)."""
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH:  # else it cannot nest that deep: no scan
        depth = 0
        for match in _JSON_TOKENS.finditer(data):
            token = match.group()
            depth += 1 if token in (b"[", b"{") else -1 if token in (b"]", b"}") else 0
            if depth > MAX_JSON_DEPTH:
                critical(
                    f"The request body nests JSON more than {MAX_JSON_DEPTH} levels deep; a chat completion request "
                    "needs a few."
                )
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        critical("The request body is not JSON; send a chat completion request as JSON.")


def parse_request(body: Any, lenient: bool = False) -> ChatCompletionRequest:
    """Validate a request body; one line naming the first problem otherwise. A field this server does not know (at
    the top level or in a message), and fields that contradict each other (``stream_options`` without ``stream``;
    ``max_tokens`` and ``max_completion_tokens`` of different values), are refused, as OpenAI refuses them, unless
    ``lenient``: then unknown fields are ignored, ``stream_options`` is ignored without ``stream`` and
    ``max_completion_tokens`` wins. Text that is not valid Unicode (a lone surrogate escape) is refused either way."""
    if not isinstance(body, dict):
        critical(f"The request body is a JSON {_json_kind(body)}; send a chat completion request: a JSON object.")
    if not lenient:
        unknown = sorted(set(body) - set(ChatCompletionRequest.model_fields) - IGNORED_FIELDS)
        if unknown:
            critical(
                f"Unrecognized request argument supplied: {_shown(unknown[0])}; check its spelling, or leave it out."
            )
        _check_message_fields(body.get("messages"))
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        critical(f"Invalid request: {where}: {first['msg']}.")
    for index, message in enumerate(request.messages):
        if message.role not in ROLES:
            critical(f"Invalid request: messages[{index}].role is {message.role!r}; give one of {list(ROLES)}.")
        message.content = content_parts(message.content, index)
    stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
    for index, stop in enumerate(stops):
        valid_text(stop, "stop" if isinstance(request.stop, str) else f"stop[{index}]")
    _check_supported(request)
    if not lenient:
        _check_agreement(request)
    return request


def _check_supported(request: ChatCompletionRequest) -> None:
    """Refuse what this server does not implement and would change the answer (``n`` > 1, ``logprobs``,
    ``UNSUPPORTED_FIELDS``)."""
    if request.n != 1:
        critical(f"n={request.n}: this server returns one choice per request; send n=1 (or leave it out).")
    if request.logprobs:
        critical("logprobs are not returned by this server; leave logprobs out.")
    for name, asks_nothing in UNSUPPORTED_FIELDS:
        if not asks_nothing(getattr(request, name)):
            critical(f"{name} is not supported by this server and would change the answer; leave {name} out.")


def _json_kind(value: Any) -> str:
    kinds = ((list, "array"), (str, "string"), (bool, "boolean"), ((int, float), "number"), (type(None), "null"))
    return next(name for kind, name in kinds if isinstance(value, kind))


def _check_message_fields(messages: Any) -> None:
    """Refuse a field a message cannot hold (``messages`` as sent; its shape is checked after)."""
    for index, message in enumerate(messages if isinstance(messages, list) else []):
        unknown = sorted(set(message) - MESSAGE_FIELDS) if isinstance(message, dict) else []
        if unknown:
            critical(
                f"Invalid request: messages[{index}] cannot hold {_shown(unknown[0])}; a message holds "
                f"{sorted(MESSAGE_FIELDS)}."
            )


def valid_text(text: str, field: str) -> str:
    """``text`` where it is valid Unicode; one line naming ``field`` where it holds a lone surrogate (JSON's
    ``"\\ud800"``), which no tokenizer, stop string or response can hold."""
    at = lone_surrogate(text)
    if at is not None:
        critical(
            f"Invalid request: {field} holds {text[at]!r} at character {at}, a lone surrogate that is not valid "
            "Unicode; send the character's UTF-16 pair, or leave it out."
        )
    return text


def _check_agreement(request: ChatCompletionRequest) -> None:
    """Refuse fields that contradict each other, naming both."""
    if request.stream_options is not None and not request.stream:
        critical("stream_options is only allowed when stream is true; set stream to true, or leave stream_options out.")
    lengths = (request.max_tokens, request.max_completion_tokens)
    if None not in lengths and lengths[0] != lengths[1]:
        critical(
            f"max_tokens={lengths[0]} and max_completion_tokens={lengths[1]} disagree; send max_completion_tokens "
            "alone (it replaces max_tokens)."
        )


def max_tokens_field(request: ChatCompletionRequest) -> str | None:
    """The generation length as the client sent it, for messages (``"max_completion_tokens=0"``); None if unsent."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = getattr(request, name)
        if value is not None:
            return f"{name}={value}"
    return None


def _shown(name: str) -> str:
    """A client's field name as a message shows it: quoted, escaped, and cut to ``MAX_SHOWN_NAME`` characters."""
    return repr(name if len(name) <= MAX_SHOWN_NAME else name[:MAX_SHOWN_NAME] + "...")


def generation_options(request: ChatCompletionRequest, defaults: GenerationOptions) -> GenerationOptions:
    """Generation length, sampling and stop strings of ``request``; what it leaves out comes from ``defaults`` (the
    server's ``--max-new-tokens``, ``--temperature``, ``--top-k``, ``--top-p``, ``--seed`` and the penalties)."""
    max_tokens = next((n for n in (request.max_completion_tokens, request.max_tokens) if n is not None), None)
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    return defaults.with_overrides(
        max_new_tokens=max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        stop=stop or None,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
    )


def content_parts(content: Any, index: int) -> list[ContentPart]:
    """The parts of ``messages[index]``'s ``content``: its string, or its list of parts checked against OpenAI's
    schema (a text part holds a string ``text``, an image part an ``image_url`` object with a string ``url``; nothing
    else, and at least one part); one line naming the field otherwise."""
    where = f"messages[{index}].content"
    if isinstance(content, str):
        return [ContentPart(type="text", text=valid_text(content, where))]
    if not isinstance(content, list) or not content:
        critical(f"Invalid request: {where} must be a string or a list of at least one text or image_url part.")
    parts = []
    for number, part in enumerate(content):
        field = f"{where}[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in PART_FIELDS:
            critical(f"Invalid request: {field} must be an object of type 'text' or 'image_url'.")
        extra = sorted(set(part) - PART_FIELDS[kind])
        if extra:
            critical(f"Invalid request: {field} is a {kind} part and cannot hold {extra[0]!r}.")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                critical(f"Invalid request: {field}.text must be a string.")
            parts.append(ContentPart(type="text", text=valid_text(part["text"], f"{field}.text")))
            continue
        image_url = part.get("image_url")
        if not isinstance(image_url, dict) or not isinstance(image_url.get("url"), str):
            critical(f"Invalid request: {field}.image_url must be an object with a string url.")
        unknown = sorted(set(image_url) - IMAGE_URL_FIELDS)
        if unknown:
            critical(f"Invalid request: {field}.image_url cannot hold {unknown[0]!r}.")
        detail = image_url.get("detail")
        if detail is not None and detail not in IMAGE_DETAILS:
            critical(f"Invalid request: {field}.image_url.detail is {detail!r:.40}; give one of {list(IMAGE_DETAILS)}.")
        parts.append(ContentPart(type="image_url", image_url=ImageURL(url=image_url["url"])))
    return parts


def image_and_prompt(
    request: ChatCompletionRequest, image_folder: Path | None, lenient: bool = False
) -> tuple[Image.Image | None, str | Conversation]:
    """The image of ``request`` (``None``: a text-only request) and its prompt: the user text of a single user
    message with the image, else the messages as a ``Conversation`` (the image's turn marked); local paths only
    inside ``image_folder``; a data URL's media type is checked unless ``lenient`` (``load_request_image``)."""
    parts = [message.content for message in request.messages]  # checked by parse_request
    images = [
        (index, number, part.image_url)
        for index, message_parts in enumerate(parts)
        for number, part in enumerate(message_parts)
        if part.image_url is not None
    ]
    if len(images) > 1:
        critical(f"The messages hold {len(images)} images; this export takes at most one image per request.")
    holder, number, url = images[0] if images else (None, None, None)
    if holder is not None and request.messages[holder].role != "user":
        critical(f"The image is in a {request.messages[holder].role} message; send it in a user message.")
    texts = [
        "\n".join(part.text for part in message_parts if part.type == "text" and part.text) for message_parts in parts
    ]
    if len(request.messages) == 1 and holder is not None:
        prompt: str | Conversation = texts[0]
    else:
        turns = [
            Turn(role_of(m.role), text, index == holder) for index, (m, text) in enumerate(zip(request.messages, texts))
        ]
        prompt = Conversation(tuple(turns))
    if url is None:
        return None, prompt
    field = f"messages[{holder}].content[{number}].image_url"
    return load_request_image(url.url, image_folder, field, lenient), prompt


def load_request_image(
    url: str, image_folder: Path | None, field: str = "image_url", lenient: bool = False
) -> Image.Image:
    """An ``image_url`` (``field`` names it in errors): a base64 data URL whose media type is the image format its
    bytes hold (not checked when ``lenient``), or (when the server allows a folder) a path in it, absolute or
    relative to it, or a ``file:`` URL (RFC 8089: ``file:///path``, ``file://localhost/path``, percent-encoded)."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.endswith(";base64"):
            critical("The image data URL is not base64; send data:image/png;base64,<data>.")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            critical("The image data URL holds invalid base64; send data:image/png;base64,<data>.")
        if not lenient:
            _check_media_type(header.removeprefix("data:").split(";")[0].strip().lower(), data)
        return decode_image(data, "the image_url data")
    if url.startswith(("http://", "https://")):
        critical("This server fetches no URLs; send the image as a base64 data URL (data:image/png;base64,...).")
    if image_folder is None:
        critical(
            "Local image paths are off; send the image as a base64 data URL, or start the server with "
            "--allow-local-images FOLDER."
        )
    path = _local_path(url, field)
    folder = image_folder.resolve()
    given = path if path.is_absolute() else folder / path
    path = given.resolve()
    if not path.is_relative_to(folder) and os.path.normpath(given).startswith(f"{folder}{os.sep}"):
        critical(
            f"{field}: {url!r} is inside {folder} but links to a file outside it, which this server does not read "
            "(--allow-local-images); send a file inside it, or a data URL."
        )
    if not path.is_relative_to(folder):
        critical(
            f"{field}: {url!r} is outside {folder}, the folder this server allows images from "
            "(--allow-local-images); send a path inside it, or a data URL."
        )
    if not path.is_file():
        critical(f"{field}: there is no image file at {url!r} in {folder}; send a path inside it, or a data URL.")
    return load_image(path)


# names clients use for a registered media type, and formats Pillow names apart that are one media type (a
# camera's MPO is a JPEG file with more pictures after the first)
MEDIA_TYPE_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/x-ms-bmp": "image/bmp",
    "image/vnd.microsoft.icon": "image/x-icon",
}
FORMAT_MEDIA_TYPES = {"MPO": "image/jpeg"}


def _check_media_type(media_type: str, data: bytes) -> None:
    """Refuse a data URL whose media type is no image, or another image format than its bytes hold."""
    declared = MEDIA_TYPE_ALIASES.get(media_type, media_type)
    if not declared.startswith("image/"):
        critical(
            f"The image data URL declares {_shown(media_type) if media_type else 'no media type'}, not an image; "
            "send data:image/png;base64,<data> (or the image/... type of your image)."
        )
    held_format = image_format(data) or ""
    held = FORMAT_MEDIA_TYPES.get(held_format) or Image.MIME.get(held_format)
    if held is not None and held != declared:
        critical(
            f"The image data URL declares {_shown(media_type)} but holds {held}; declare data:{held};base64,<data>."
        )


def _local_path(url: str, field: str) -> Path:
    """The path of a local image reference: a ``file:`` URL decoded as RFC 8089 says, or a plain path as given."""
    if not url.startswith("file:"):
        return Path(url)
    parsed = urllib.parse.urlsplit(url)
    if parsed.netloc not in ("", "localhost"):
        critical(
            f"{field}: {url!r} names the host {parsed.netloc!r}; this server reads files on its own machine only "
            "(file:///path or file://localhost/path)."
        )
    return Path(urllib.parse.unquote(parsed.path))


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
