"""The length, stop and penalty cases every front end must answer alike, on the same prompt and image.

There is one generation loop (``luvc.runtime.running_batch``); the loop itself, ``Pipeline.generate``, ``run``,
serve's HTTP API, the Triton model and ``eval`` each run these cases (``eval`` has only a length: it decodes greedily
to the model's end-of-sequence ids). What each case must give is worked out from the greedy answer without stop
strings (``Reference``), not from the front end under test: a length is a prefix of that answer, a stop string cuts it
before the string's first appearance, and penalties must break the repeated run the greedy answer falls into.
"""

from __future__ import annotations

import dataclasses

from luvc.images import synthetic_image
from luvc.runtime.options import GenerationOptions
from luvc.runtime.pipeline import Pipeline
from luvc.runtime.sampling import SamplingConfig

PROMPT = "What is in this picture?"
IMAGE_SEED = 3  # the tiny Qwen2-VL's greedy answer to this image repeats a run of five tokens
TOKENS = 16
SHORT = 5
PRESENCE_PENALTY = 2.0  # OpenAI's largest


def image():
    """The image every front end is asked about."""
    return synthetic_image(224, 224, IMAGE_SEED)


@dataclasses.dataclass(frozen=True)
class Case:
    """One request: its length, stop strings and presence penalty."""

    name: str
    max_new_tokens: int = TOKENS
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0

    def options(self) -> GenerationOptions:
        sampling = SamplingConfig(presence_penalty=self.presence_penalty)
        return GenerationOptions(self.max_new_tokens, sampling, stop=self.stop)


@dataclasses.dataclass(frozen=True)
class Answer:
    """What a front end answered: the text, why it ended and (where the front end says) the tokens it generated."""

    text: str
    finish_reason: str
    tokens: int | None = None


@dataclasses.dataclass(frozen=True)
class Reference:
    """The greedy answer of ``TOKENS`` tokens without stop strings, and the answer under the presence penalty."""

    text: str
    tokens: tuple[int, ...]
    penalized_text: str

    @classmethod
    def of(cls, pipeline: Pipeline) -> Reference:
        plain = pipeline.generate(image(), PROMPT, GenerationOptions(TOKENS))
        assert plain.finish_reasons == ["length"], "the reference answer must run to its length"
        tokens = tuple(plain.tokens[0].tolist())
        assert len(set(tokens)) < len(tokens), "the reference answer must repeat tokens for the penalty case to show"
        penalized = pipeline.generate(image(), PROMPT, Case("penalty", presence_penalty=PRESENCE_PENALTY).options())
        return cls(plain.texts[0], tokens, penalized.texts[0])

    def stop_string(self) -> str:
        """Two characters from the middle of the answer (their first appearance may come earlier)."""
        middle = len(self.text) // 2
        return self.text[middle : middle + 2]

    def cases(self) -> list[Case]:
        return [
            Case("length", max_new_tokens=SHORT),
            Case("stop string", stop=(self.stop_string(),)),
            Case("penalty", presence_penalty=PRESENCE_PENALTY),
        ]

    def check(self, case: Case, answer: Answer) -> None:
        """Fail unless ``answer`` is what ``case`` must give."""
        if case.name == "length":
            assert answer.finish_reason == "length" and answer.tokens in (None, SHORT), answer
            assert answer.text and self.text.startswith(answer.text), answer
        elif case.name == "stop string":
            cut = self.text.find(self.stop_string())
            assert 0 < cut < len(self.text) - 2, "the stop string must cut the answer short"
            assert answer == Answer(self.text[:cut], "stop", answer.tokens), answer
        else:
            assert answer.finish_reason == "length" and answer.tokens in (None, TOKENS), answer
            assert answer.text == self.penalized_text != self.text, answer


def penalty_breaks_repeats(tokens: list[int]) -> bool:
    """Whether a penalized answer of ``TOKENS`` tokens repeats none (the greedy one repeats a run)."""
    return len(tokens) == TOKENS and len(set(tokens)) == TOKENS
