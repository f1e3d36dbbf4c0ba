"""Token ids -> text as they arrive: whole UTF-8 characters only, and stop strings cut where they start."""

from __future__ import annotations

from collections.abc import Sequence


class TextStream:
    """Incremental detokenizer for one sequence.

    ``add(token)`` returns the text that became final with that token: a piece is held back while it ends in an
    incomplete UTF-8 character or could be the start of a stop string. When a stop string appears, the text ends
    before it (as OpenAI's ``stop`` does) and ``stopped`` turns true; later tokens are ignored. The pieces plus
    ``flush()`` join to ``text``."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.tokens: list[int] = []
        self.stopped = False
        self._shown = 0  # characters of the decoded text already returned
        self._text = ""

    @property
    def text(self) -> str:
        """The final text so far: up to the stop string when one appeared."""
        return self._text

    def add(self, token: int) -> str:
        """Append ``token``; return the newly final text ('' when nothing is final yet)."""
        if self.stopped:
            return ""
        self.tokens.append(int(token))
        decoded = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = min((i for i in (decoded.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._text = decoded[:cut]
            return self._release(len(self._text))
        self._text = decoded
        if decoded.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            return ""
        return self._release(len(decoded) - self._held_back(decoded))

    def flush(self) -> str:
        """The text not returned yet (held back for a stop string that did not come): call once at the end."""
        return self._release(len(self._text))

    def _held_back(self, decoded: str) -> int:
        """Length of the longest tail of ``decoded`` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(decoded)), longest, -1):
                if decoded.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _release(self, end: int) -> str:
        end = max(end, self._shown)
        piece, self._shown = self._text[self._shown : end], end
        return piece
