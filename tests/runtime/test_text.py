"""``TextStream`` on the tiny Qwen2-VL tokenizer (byte-level BPE): pieces, multi-byte characters, stop strings."""

import pytest

from luvc.models import load_model
from luvc.runtime.text import TextStream


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("tiny-qwen2-vl").tokenizer


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def feed(stream: TextStream, tokens) -> list[str]:
    pieces = [stream.add(token) for token in tokens]
    return [*pieces, stream.flush()]


def test_pieces_join_to_the_decoded_text(tokenizer):
    tokens = ids(tokenizer, "hello world, a cat")
    stream = TextStream(tokenizer)
    pieces = feed(stream, tokens)
    assert "".join(pieces) == "hello world, a cat" == stream.text
    assert sum(bool(piece) for piece in pieces) == len(tokens)  # one character per token here, none held back


def test_a_multi_byte_character_is_returned_whole(tokenizer):
    tokens = ids(tokenizer, "a é b")
    stream = TextStream(tokenizer)
    pieces = feed(stream, tokens)
    assert "".join(pieces) == "a é b"
    assert all("\ufffd" not in piece for piece in pieces)
    assert len(tokens) > len("a é b")  # é is two byte tokens, so one add() returned nothing


def test_a_stop_string_ends_the_text_before_it(tokenizer):
    stream = TextStream(tokenizer, stop=["wor"])
    pieces = feed(stream, ids(tokenizer, "hello world, a cat"))
    assert stream.stopped
    assert "".join(pieces) == stream.text == "hello "
    assert stream.add(ids(tokenizer, "x")[0]) == ""  # later tokens are ignored


def test_text_that_could_start_a_stop_string_is_held_back_until_it_cannot(tokenizer):
    stream = TextStream(tokenizer, stop=["cats"])
    pieces = [stream.add(token) for token in ids(tokenizer, "a cat")]
    assert "".join(pieces) == "a "  # "cat" may still become "cats"
    assert stream.flush() == "cat" and not stream.stopped


def test_the_earliest_of_several_stop_strings_wins(tokenizer):
    stream = TextStream(tokenizer, stop=["cat", "world"])
    assert "".join(feed(stream, ids(tokenizer, "hello world, a cat"))) == "hello "
