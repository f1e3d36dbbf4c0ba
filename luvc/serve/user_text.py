"""What a client's text may hold, checked before it is tokenized: no more characters than the export's text budget
can take, and none of the model's control tokens.

A tokenizer turns the strings of its special tokens (``<|im_end|>``, ``<|im_start|>``, ``<|image_pad|>``, ...) into
control tokens wherever they appear, so a user who types them could close their turn and forge an assistant's, or
add placeholders of another modality. The server refuses such text (400) instead of guessing what was meant. Length
is bounded without tokenizing: no token is longer than the vocabulary's longest string, so text longer than that
times the profile's ``--max-text-tokens`` cannot fit and is refused at once.
"""

from __future__ import annotations

import dataclasses

from luvc.errors import critical


@dataclasses.dataclass(frozen=True)
class UserTextGuard:
    """The ``control_tokens`` user text may not hold, and the most characters it may have."""

    control_tokens: tuple[str, ...]
    max_chars: int

    @classmethod
    def for_pipeline(cls, pipeline) -> UserTextGuard:
        """The guard of an export's ``Pipeline``: its tokenizer and its profile's ``max_text_tokens``."""
        return cls.for_tokenizer(pipeline.tokenizer, pipeline.manifest.profile.max_text_tokens)

    @classmethod
    def for_tokenizer(cls, tokenizer, max_text_tokens: int) -> UserTextGuard:
        """The guard of ``tokenizer`` (its special tokens, its longest vocabulary string) for prompts of at most
        ``max_text_tokens`` tokens."""
        special = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
        special |= set(tokenizer.all_special_tokens)
        longest = max((len(piece) for piece in tokenizer.get_vocab()), default=1)
        return cls(tuple(sorted(token for token in special if token)), max(1, max_text_tokens) * max(1, longest))

    def check(self, text: str) -> str:
        """``text`` when it may be tokenized; else an error naming the problem and the fix."""
        if len(text) > self.max_chars:
            critical(
                f"The text has {len(text)} characters, more than this export's prompt budget can hold "
                f"({self.max_chars} at most); send a shorter prompt."
            )
        found = [token for token in self.control_tokens if token in text]
        if found:
            critical(
                f"The text holds {found[0]!r}, one of the model's control tokens; remove it (user text cannot open or "
                "close turns or add placeholders; the image goes in an image_url part)."
            )
        return text
