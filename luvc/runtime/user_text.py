"""What a user's text may hold (a server client's messages, ``run --system``), checked before it is tokenized: no more
characters than the export's text budget can take, and none of the model's control tokens.

A tokenizer turns the strings of its special tokens (``<|im_end|>``, ``<|im_start|>``, ``<|image_pad|>``, ...) into
control tokens wherever they appear, so a user who types them could close their turn and forge an assistant's, or
add placeholders of another modality. Such text is refused (the server's 400) instead of guessing what was meant. Length
is bounded without tokenizing: no token is longer than the vocabulary's longest string, so text longer than that
times the profile's ``--max-text-tokens`` cannot fit and is refused at once.
"""

from __future__ import annotations

import dataclasses

from luvc.errors import critical
from luvc.standalone_tokenizer import special_texts


def lone_surrogate(text: str) -> int | None:
    """Where ``text`` first holds a lone surrogate (JSON's ``"\\ud800"``, or a command line's bytes that are not
    UTF-8, as Python hands them over), which no tokenizer, stop string or response can hold; None for valid Unicode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


@dataclasses.dataclass(frozen=True)
class UserTextGuard:
    """The ``control_tokens`` user text may not hold, the most characters it may have, and where the user sends an
    image instead of typing its placeholder (``image_goes``: "in an image_url part", "in --image")."""

    control_tokens: tuple[str, ...]
    max_chars: int
    image_goes: str = "in an image_url part"

    @classmethod
    def for_pipeline(cls, pipeline, image_goes: str | None = None) -> UserTextGuard:
        """The guard of an export's ``Pipeline``: its tokenizer and its profile's ``max_text_tokens``."""
        return cls.for_tokenizer(pipeline.tokenizer, pipeline.manifest.profile.max_text_tokens, image_goes)

    @classmethod
    def for_tokenizer(cls, tokenizer, max_text_tokens: int, image_goes: str | None = None) -> UserTextGuard:
        """The guard of ``tokenizer`` (its special tokens, its longest vocabulary string) for prompts of at most
        ``max_text_tokens`` tokens."""
        special = special_texts(tokenizer)
        longest = max((len(piece) for piece in tokenizer.get_vocab()), default=1)
        tokens = tuple(sorted(token for token in special if token))
        return cls(tokens, max(1, max_text_tokens) * max(1, longest), image_goes or cls.image_goes)

    def check(self, text: str, name: str = "The text") -> str:
        """``text`` (called ``name`` in errors) when it may be tokenized; else an error naming the problem and the
        fix."""
        if len(text) > self.max_chars:
            critical(
                f"{name} has {len(text)} characters, more than this export's prompt budget can hold "
                f"({self.max_chars} at most); send a shorter prompt."
            )
        found = [token for token in self.control_tokens if token in text]
        if found:
            critical(
                f"{name} holds {found[0]!r}, one of the model's control tokens; remove it (user text cannot open or "
                f"close turns or add placeholders; the image goes {self.image_goes})."
            )
        return text
