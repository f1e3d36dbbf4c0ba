"""What a generation is asked for and what each step gives, shared by every front end (``run``, ``serve``, Triton,
``eval``, ``Pipeline.generate``) and by the one loop that runs them all (``luvc.runtime.running_batch``).

``GenerationOptions`` are one row's (or one request's) settings: length, sampling, stop tokens and stop strings.
``RowStep`` is what one step gave one row, its finish reason decided by the loop, once. ``Step`` is a request's
batch-wide view of a step (``luvc.runtime.request``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from typing import Generic, Literal, TypeVar

import numpy as np

from luvc.errors import critical
from luvc.export.manifest import ExportManifest
from luvc.runtime.sampling import SamplingConfig
from luvc.runtime.user_text import lone_surrogate

FinishReason = Literal["stop", "length"]  # a stop token or string; max_new_tokens
MAX_STOP_STRINGS = 4  # as OpenAI's API
MAX_STOP_CHARS = 256  # per stop string


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """How to generate: up to ``max_new_tokens`` tokens, sampled by ``sampling`` (or each row by its own of
    ``row_sampling``, one per row: greedy, sampled and seeded rows share a batch, and each row's tokens are those it
    gets alone), ending at ``stop_token_ids`` (``None``: the model's end-of-sequence ids; ``()``: none) or where one
    of the ``stop`` strings appears in the text (the text ends before it, as OpenAI's ``stop`` does);
    ``keep_logits`` and ``keep_decode_feeds`` keep each step's logits and decode feeds on the host (parity and
    calibration)."""

    max_new_tokens: int = 64
    sampling: SamplingConfig = SamplingConfig()
    stop_token_ids: tuple[int, ...] | None = None
    keep_logits: bool = False
    keep_decode_feeds: bool = False
    row_sampling: tuple[SamplingConfig, ...] = ()
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", tuple(int(token) for token in self.stop_token_ids))
        object.__setattr__(self, "row_sampling", tuple(self.row_sampling))
        object.__setattr__(self, "stop", tuple(self.stop))
        if len(self.stop) > MAX_STOP_STRINGS:
            critical(f"stop has {len(self.stop)} strings; give at most {MAX_STOP_STRINGS}.")
        for text in self.stop:
            if not isinstance(text, str) or not 0 < len(text) <= MAX_STOP_CHARS:
                critical(f"A stop string must be text of 1 to {MAX_STOP_CHARS} characters; got {text!r:.40}.")
            if lone_surrogate(text) is not None:
                critical(f"A stop string must be valid Unicode text; {text!r:.40} holds a lone surrogate.")

    def samplings(self, batch: int) -> tuple[SamplingConfig, ...]:
        """Each row's sampling for a batch of ``batch`` rows (``sampling`` for all, unless ``row_sampling`` is set)."""
        if not self.row_sampling:
            return (self.sampling,) * batch
        if len(self.row_sampling) != batch:
            critical(f"row_sampling has {len(self.row_sampling)} settings for a batch of {batch}; give one per row.")
        return self.row_sampling

    def rows(self, batch: int) -> tuple[GenerationOptions, ...]:
        """The options of each row of a batch of ``batch`` rows: these, each with its own sampling."""
        return tuple(dataclasses.replace(self, sampling=config, row_sampling=()) for config in self.samplings(batch))

    def with_overrides(
        self,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
    ) -> GenerationOptions:
        """These options (a server's defaults) with what a request sets, by name (seven numbers of one kind: a swap
        of two would pass silently by position); ``None`` keeps the default."""
        base = self.sampling

        def chosen(value, default):
            return default if value is None else type(default)(value)

        sampling = SamplingConfig(
            temperature=chosen(temperature, base.temperature),
            top_k=base.top_k,
            top_p=chosen(top_p, base.top_p),
            seed=base.seed if seed is None else int(seed),
            presence_penalty=chosen(presence_penalty, base.presence_penalty),
            frequency_penalty=chosen(frequency_penalty, base.frequency_penalty),
        )
        length = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        return dataclasses.replace(
            self, max_new_tokens=length, sampling=sampling, stop=self.stop if stop is None else tuple(stop)
        )

    def stops(self, manifest: ExportManifest) -> tuple[int, ...]:
        """The stop ids: as given, else the model's end-of-sequence ids from ``manifest``."""
        if self.stop_token_ids is not None:
            return self.stop_token_ids
        eos = manifest.template.eos_token_id
        return (eos,) if isinstance(eos, int) else tuple(eos or ())


Member = TypeVar("Member", bound=Hashable)  # what a running batch knows a row by (a row index, a server's job)


@dataclasses.dataclass(frozen=True)
class RowStep(Generic[Member]):
    """What one step gave one row (known by its ``member`` key): its ``token``, the text that token made final, and
    once the row has finished, why (``None`` while it runs); ``logits (V,)`` when its options keep them."""

    member: Member
    token: int
    text: str
    finish_reason: FinishReason | None = None
    logits: np.ndarray | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclasses.dataclass
class Step:
    """What one step of a request produced: ``tokens (B,)`` on the host (a row that has finished repeats its last
    token), which rows have finished, and (when the options keep them) the ``(B, V)`` logits the tokens were chosen
    from (``NaN`` for rows that finished before the step) and the decode graph's feeds."""

    index: int
    tokens: np.ndarray
    finished: np.ndarray
    logits: np.ndarray | None = None
    decode_feeds: dict[str, np.ndarray] | None = None
