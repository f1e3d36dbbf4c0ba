"""Request validation of the OpenAI wire format: what is refused, with which message, and the defaults."""

import base64
import io
import json
import urllib.parse

import pytest

from luvc.errors import LuvcError
from luvc.images import synthetic_image
from luvc.prompt import Conversation, Turn
from luvc.runtime.options import GenerationOptions
from luvc.runtime.sampling import SamplingConfig
from luvc.serve.openai_api import generation_options, image_and_prompt, parse_request

DEFAULTS = GenerationOptions(32, SamplingConfig(temperature=0.0, top_k=5, top_p=0.9, seed=None), stop=("END",))


def png_url(image=None) -> str:
    buffer = io.BytesIO()
    (image or synthetic_image(56, 56)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def body(*parts, role="user", **fields) -> dict:
    return {"messages": [{"role": role, "content": list(parts)}], **fields}


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def test_a_data_url_image_and_text_parts_make_the_request():
    image, prompt = image_and_prompt(
        parse_request(body(text_part("Describe"), image_part(png_url()), text_part("it."))), None
    )
    assert image.size == (56, 56) and image.mode == "RGB"
    assert prompt == "Describe\nit."


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"messages": []}, "Invalid request: messages: List should have at least 1 item"),
        (body(text_part("hi"), n=2), "n=2: this server returns one choice per request"),
        (body(text_part("hi"), logprobs=True), "logprobs are not returned"),
        (body(text_part("hi"), max_tokens="many"), "Invalid request: max_tokens: Input should be a valid integer"),
        # round 3: OpenAI's schema, strictly
        (
            body({"type": "image_url", "image_url": None}),
            r"messages\[0\].content\[0\].image_url must be an object with a string url",
        ),
        (
            body({"type": "text", "text": "hi", "image_url": {"url": "data:,"}}),
            r"messages\[0\].content\[0\] is a text part and cannot hold 'image_url'",
        ),
        (body(), r"messages\[0\].content must be a string or a list of at least one text or image_url part"),
        (body(text_part("hi"), presence_penalty=True), "presence_penalty: Input should be a valid number"),
        (body(text_part("hi"), max_tokens=5.0), "max_tokens: Input should be a valid integer"),
        (body(image_part(png_url()), role="USER"), r"messages\[0\].role is 'USER'; give one of \['system', 'user'"),
        (body({"type": "input_audio"}), r"messages\[0\].content\[0\] must be an object of type 'text' or"),
    ],
)
def test_invalid_bodies_get_one_line_naming_the_field(request_body, message):
    with pytest.raises(LuvcError, match=message):
        parse_request(request_body)


def jpeg_base64() -> str:
    buffer = io.BytesIO()
    synthetic_image(56, 56).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


# round 4: a typo, a contradiction or a mislabelled image changes no answer silently
STRICT_CASES = [
    (body(text_part("hi"), temprature=1.5), "Unrecognized request argument supplied: 'temprature'; check its spelling"),
    (body(text_part("hi"), **{"x" * 500: 1}), r"supplied: 'x{64}\.\.\.'; check"),
    (
        body(text_part("hi"), stream_options={"include_usage": True}),
        "stream_options is only allowed when stream is true",
    ),
    (
        body(text_part("hi"), max_tokens=6, max_completion_tokens=3),
        "max_tokens=6 and max_completion_tokens=3 disagree; send max_completion_tokens alone",
    ),
]
STRICT_IMAGE_CASES = [
    (
        body(image_part("data:text/plain;base64," + base64.b64encode(b"hello").decode())),
        "The image data URL declares 'text/plain', not an image; send data:image/png;base64",
    ),
    (body(image_part("data:;base64," + jpeg_base64())), "The image data URL declares no media type, not an image"),
    (
        body(image_part("data:image/png;base64," + jpeg_base64())),
        "The image data URL declares 'image/png' but holds image/jpeg; declare data:image/jpeg;base64,<data>.",
    ),
]


@pytest.mark.parametrize(("request_body", "message"), STRICT_CASES)
def test_unknown_and_contradicting_fields_are_refused_naming_the_field_unless_lenient(request_body, message):
    with pytest.raises(LuvcError, match=message):
        parse_request(request_body)
    parse_request(request_body, lenient=True)  # as before: ignored, and max_completion_tokens wins


@pytest.mark.parametrize(("request_body", "message"), STRICT_IMAGE_CASES)
def test_a_data_url_must_declare_the_image_format_it_holds_unless_lenient(request_body, message):
    with pytest.raises(LuvcError, match=message):
        image_and_prompt(parse_request(request_body), None)
    if "text/plain" not in message:  # bytes that are an image are read whatever the URL said
        image, _ = image_and_prompt(parse_request(request_body), None, lenient=True)
        assert image.size == (56, 56)


def test_fields_that_cannot_change_the_answer_and_honest_data_urls_are_accepted():
    fields = {"user": "u1", "metadata": {"k": "v"}, "store": False, "service_tier": "auto", "parallel_tool_calls": True}
    parse_request(body(text_part("hi"), max_tokens=4, max_completion_tokens=4, **fields))
    parse_request(body(text_part("hi"), stream=True, stream_options={"include_usage": True}))
    for media_type in ("image/jpeg", "image/jpg", "IMAGE/JPEG"):
        url = f"data:{media_type};base64,{jpeg_base64()}"
        image, _ = image_and_prompt(parse_request(body(image_part(url))), None)
        assert image.size == (56, 56)
    lenient = generation_options(
        parse_request(body(text_part("hi"), max_tokens=6, max_completion_tokens=3), lenient=True), DEFAULTS
    )
    assert lenient.max_new_tokens == 3


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        (body(image_part(png_url()), image_part(png_url())), "The messages hold 2 images; .* at most one image"),
        (body(image_part(png_url()), role="assistant"), "The image is in a assistant message; send it in a user"),
        (
            {"messages": [body(image_part(png_url()))["messages"][0], {"role": "system", "content": "Be brief."}]},
            "Turn 1 is a system turn; give the system prompt as the first turn only",
        ),
        (
            {"messages": [body(image_part(png_url()))["messages"][0], {"role": "tool", "content": "x"}]},
            r"messages\[1\].role is 'tool'; give one of \['system', 'user', 'assistant'\]",
        ),
        (body(image_part("https://example.com/cat.png")), "This server fetches no URLs"),
        (body(image_part("data:image/png,rawbytes")), "The image data URL is not base64"),
        (body(image_part("data:image/png;base64,@@@")), "The image data URL holds invalid base64"),
        (
            body(image_part("data:image/png;base64," + base64.b64encode(b"not an image").decode())),
            r"Cannot read the image_url data as an image \(not a known image format\); use a PNG or JPEG file.",
        ),
        (body(image_part("/tmp/cat.png")), "Local image paths are off"),
    ],
)
def test_requests_the_export_cannot_take_are_refused_with_the_fix(request_body, message):
    with pytest.raises(LuvcError, match=message):
        image_and_prompt(parse_request(request_body), None)


def test_a_system_message_and_earlier_turns_make_a_conversation_with_the_image_in_its_turn():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [text_part("Look:"), image_part(png_url()), text_part("what is it?")]},
        {"role": "assistant", "content": "A square."},
        {"role": "user", "content": [text_part("And its colour?")]},
    ]
    image, prompt = image_and_prompt(parse_request({"messages": messages}), None)
    assert image.size == (56, 56)
    assert prompt == Conversation(
        (
            Turn("system", "Be brief."),
            Turn("user", "Look:\nwhat is it?", visual=True),
            Turn("assistant", "A square."),
            Turn("user", "And its colour?"),
        )
    )


def test_messages_without_an_image_make_a_text_only_conversation():
    image, prompt = image_and_prompt(parse_request(body(text_part("Hello"), text_part("there."))), None)
    assert image is None and prompt == Conversation((Turn("user", "Hello\nthere."),))


def test_local_paths_are_read_only_inside_the_allowed_folder(tmp_path):
    allowed, outside = tmp_path / "images", tmp_path / "other"
    allowed.mkdir()
    outside.mkdir()
    synthetic_image(56, 84).save(allowed / "a.png")
    synthetic_image(56, 84).save(outside / "b.png")
    image, _ = image_and_prompt(parse_request(body(image_part(f"file://{allowed / 'a.png'}"))), allowed)
    assert image.size == (84, 56)
    with pytest.raises(LuvcError, match=r"content\[0\].image_url: .* is outside .*images, the folder this server"):
        image_and_prompt(parse_request(body(image_part(str(allowed / ".." / "other" / "b.png")))), allowed)
    (allowed / "link.png").symlink_to(outside / "b.png")
    with pytest.raises(LuvcError, match=r"'link.png' is inside .*images but links to a file outside it"):
        image_and_prompt(parse_request(body(image_part("link.png"))), allowed)


def test_local_image_urls_are_read_as_rfc_8089_says_and_errors_name_the_request_field(tmp_path, monkeypatch):
    allowed = tmp_path / "my images"
    allowed.mkdir()
    synthetic_image(56, 84).save(allowed / "a b.png")
    quoted = urllib.parse.quote(str(allowed / "a b.png"))
    for url in (f"file://{quoted}", f"file://localhost{quoted}", "a b.png", "./a%20b.png".replace("%20", " ")):
        image, _ = image_and_prompt(parse_request(body(text_part("hi"), image_part(url))), allowed)
        assert image.size == (84, 56), url
    monkeypatch.chdir(tmp_path)  # a relative path is the allowed folder's, never the server's working directory
    (tmp_path / "c.png").write_bytes((allowed / "a b.png").read_bytes())
    with pytest.raises(LuvcError, match=r"messages\[0\].content\[1\].image_url: there is no image file at 'c.png' in"):
        image_and_prompt(parse_request(body(text_part("hi"), image_part("c.png"))), allowed)
    with pytest.raises(LuvcError, match=r"names the host 'example.com'; this server reads files on its own machine"):
        image_and_prompt(parse_request(body(image_part("file://example.com/a.png"))), allowed)
    with pytest.raises(LuvcError) as error:
        image_and_prompt(parse_request(body(image_part("missing.png"))), allowed)
    assert "--image" not in str(error.value)  # the CLI's flag means nothing to an HTTP client


def test_unset_fields_take_the_server_defaults_and_set_ones_override_them():
    assert generation_options(parse_request(body(text_part("hi"))), DEFAULTS) == DEFAULTS
    params = generation_options(
        parse_request(body(text_part("hi"), max_tokens=4, temperature=0.5, top_p=0.5, seed=3, stop="x")), DEFAULTS
    )
    assert params == GenerationOptions(4, SamplingConfig(temperature=0.5, top_k=5, top_p=0.5, seed=3), stop=("x",))
    assert (
        generation_options(parse_request(body(text_part("hi"), max_completion_tokens=0)), DEFAULTS).max_new_tokens == 0
    )


def test_bad_sampling_values_get_the_cli_message_and_too_many_stops_are_refused():
    with pytest.raises(LuvcError, match=r"Sampling needs a finite temperature >= 0.*got temperature=-1"):
        generation_options(parse_request(body(text_part("hi"), temperature=-1)), DEFAULTS)
    with pytest.raises(LuvcError, match="stop has 5 strings; give at most 4"):
        generation_options(parse_request(body(text_part("hi"), stop=list("abcde"))), DEFAULTS)


# round 5 (issue 77): text that is not Unicode, fields inside a message, a body that is not an object
NOT_UNICODE_CASES = [
    ({"messages": [{"role": "user", "content": "hi \ud800"}]}, r"messages\[0\].content holds '\\ud800' at character 3"),
    (
        {"messages": [{"role": "system", "content": "\udfff"}, {"role": "user", "content": "hi"}]},
        r"messages\[0\].content holds '\\udfff' at character 0, a lone surrogate that is not valid Unicode",
    ),
    (body(text_part("a\ud83dz")), r"messages\[0\].content\[0\].text holds '\\ud83d' at character 1"),
    (body(text_part("hi"), stop="\ud800"), r"Invalid request: stop holds '\\ud800'"),
    (body(text_part("hi"), stop=["ok", "x\udc00"]), r"Invalid request: stop\[1\] holds '\\udc00'"),
]


@pytest.mark.parametrize(("request_body", "message"), NOT_UNICODE_CASES)
@pytest.mark.parametrize("lenient", [False, True])
def test_text_that_is_not_unicode_is_refused_naming_the_field(request_body, message, lenient):
    with pytest.raises(LuvcError, match=message):
        parse_request(request_body, lenient=lenient)


def test_a_surrogate_pair_is_one_character_and_taken():
    request = parse_request(json.loads(r'{"messages": [{"role": "user", "content": "smile \ud83d\ude00"}]}'))
    assert request.messages[0].content[0].text == "smile \U0001f600"


@pytest.mark.parametrize(
    ("request_body", "message", "lenient_ok"),
    [
        (
            {"messages": [{"role": "user", "content": "hi", "nmae": "x"}]},
            r"messages\[0\] cannot hold 'nmae'; a message holds \['content', 'name', 'role'\]",
            True,
        ),
        (
            body({"type": "image_url", "image_url": {"url": "data:,", "detail": "ultra"}}),
            r"messages\[0\].content\[0\].image_url.detail is 'ultra'; give one of \['auto', 'low', 'high'\]",
            False,
        ),
        (
            [{"role": "user", "content": "hi"}],
            "The request body is a JSON array; send a chat completion request",
            False,
        ),
        ("hi", "The request body is a JSON string; send a chat completion request: a JSON object", False),
        (None, "The request body is a JSON null", False),
    ],
)
def test_fields_inside_a_message_and_the_body_itself_are_checked(request_body, message, lenient_ok):
    with pytest.raises(LuvcError, match=message):
        parse_request(request_body)
    if lenient_ok:
        assert parse_request(request_body, lenient=True).messages[0].content[0].text == "hi"
    else:
        with pytest.raises(LuvcError, match=message):
            parse_request(request_body, lenient=True)


def test_a_message_name_is_taken_and_a_known_detail_too():
    request = parse_request({"messages": [{"role": "user", "content": "hi", "name": "ann"}]})
    assert request.messages[0].content[0].text == "hi"
    for detail in ("auto", "low", "high"):
        part = {"type": "image_url", "image_url": {"url": png_url(), "detail": detail}}
        assert parse_request(body(part)).messages[0].content[0].image_url.url == png_url()
