"""Generation jobs for servers: a bounded wait queue, grouping of jobs that can share a batch, and the loop that
runs one group through a ``Pipeline`` and reports each job's text as it arrives.

Shared by the HTTP server (``luvc.serve.app``) and the Triton model (``luvc.serve.triton_model``). A
``Pipeline`` runs one request at a time (one KV cache), so one worker thread owns it; jobs wait in ``JobQueue``.

Batching: a pipeline batch needs one image size (bucket; ``text`` for requests without an image). Prompts of
different lengths share a batch (rows are padded on the right, each with its own length, visual shift and KV write
index), and so do different sampling settings: each row is chosen by its own temperature, top-k, top-p, penalties
and generator (a seeded row reproduces its seed's answer in any batch).
Rows are independent in every graph, so a batched job's tokens equal the job's own run.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from luvc.errors import LuvcError
from luvc.runtime.pipeline import GenerationOptions, Pipeline, Prepared
from luvc.runtime.sampling import SamplingConfig
from luvc.runtime.text import TextStream

LOG = logging.getLogger(__name__)
SHUTTING_DOWN = "The server is shutting down; retry on another instance."


class QueueClosed(Exception):
    """The queue takes no more jobs: the server is shutting down."""


@dataclasses.dataclass(frozen=True)
class GenerationParams:
    """What a client asks for besides the image and prompt."""

    max_tokens: int
    sampling: SamplingConfig = SamplingConfig()
    stop: tuple[str, ...] = ()

    def with_overrides(
        self,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
    ) -> GenerationParams:
        """These settings (a server's defaults) with the values a request sets; ``None`` keeps the default."""
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
        length = self.max_tokens if max_tokens is None else int(max_tokens)
        return GenerationParams(length, sampling, self.stop if stop is None else tuple(stop))


@dataclasses.dataclass
class Delta:
    """New text of one job."""

    text: str


@dataclasses.dataclass
class Finished:
    """The end of one job: its whole text, why it ended (``stop``: a stop token or string; ``length``:
    ``max_tokens``), token counts, and the time from submission to the first token."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float
    decode_s: float  # from the first token to the last


@dataclasses.dataclass
class Failed:
    """A job that could not run; ``message`` says why. ``user_error``: a ``LuvcError`` (the request can be fixed),
    else an internal error; ``unavailable``: the server cannot take it now (shutting down, waited too long): retry."""

    message: str
    user_error: bool = True
    unavailable: bool = False
    cancelled: bool = False  # the client cancelled it (its answer is this event, e.g. Triton's CANCELLED error)


Event = Delta | Finished | Failed


@dataclasses.dataclass(eq=False)  # a job is itself: compared by identity
class Job:
    """One prompt and image, prepared by ``Pipeline.prepare`` (a batch of one), with a callback for its events.
    ``cancel()`` (e.g. a client that went away), or ``client_cancelled()`` turning true (Triton's
    ``request.is_cancelled``), drops it from its batch at the next token."""

    prepared: Prepared
    params: GenerationParams
    emit: Callable[[Event], None]
    submitted: float = dataclasses.field(default_factory=time.perf_counter)
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    client_cancelled: Callable[[], bool] | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    def is_cancelled(self) -> bool:
        """Whether the job was cancelled, here or by its client (asked once a token)."""
        if not self.cancelled.is_set() and self.client_cancelled is not None and self.client_cancelled():
            self.cancelled.set()
        return self.cancelled.is_set()

    @property
    def batch_key(self) -> str:
        """Jobs with equal keys share a batch: those of one bucket (``text`` without an image), whatever their prompt
        lengths (rows are padded) and sampling settings (each row samples by its own, seeded with its own)."""
        return self.prepared.bucket_name


class QueueFull(Exception):
    """The wait queue is at its bound; the caller should refuse the job (HTTP 429)."""


class JobQueue:
    """A bounded FIFO of waiting jobs from which a worker takes the oldest job and the waiting jobs that can share
    its batch."""

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self._jobs: collections.deque[Job] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: Job) -> None:
        """Queue ``job``; ``QueueFull`` when ``max_waiting`` jobs already wait, ``QueueClosed`` once closed."""
        with self._ready:
            if self._closed:
                raise QueueClosed(SHUTTING_DOWN)
            if len(self._jobs) >= self.max_waiting:
                raise QueueFull(f"{len(self._jobs)} requests are waiting (the server's --max-queue); retry later.")
            self._jobs.append(job)
            self._ready.notify()

    def take(self, max_batch: int, timeout: float | None = None) -> list[Job]:
        """The oldest waiting job and up to ``max_batch - 1`` later ones with its batch key (in arrival order);
        ``[]`` after ``timeout`` seconds or once closed. Cancelled jobs are dropped."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._jobs or self._closed, timeout):
                return []
            if not self._jobs:
                return []
            first = self._jobs.popleft()
            group = [first]
            for job in list(self._jobs):
                if len(group) == max_batch:
                    break
                if job.batch_key == first.batch_key:
                    self._jobs.remove(job)
                    group.append(job)
        cancelled = [job for job in group if job.is_cancelled()]
        for job in cancelled:  # cancelled while waiting: they end before costing a token
            _cancelled(job, 0)
        return [job for job in group if job not in cancelled]

    def close(self) -> list[Job]:
        """Stop taking jobs; returns those still waiting (to be failed by the caller)."""
        with self._ready:
            self._closed = True
            left, self._jobs = list(self._jobs), collections.deque()
            self._ready.notify_all()
        return left


def run_batch(pipeline: Pipeline, jobs: Sequence[Job]) -> None:
    """Generate for ``jobs`` (equal batch keys) as one pipeline request, emitting each job's ``Delta``s and its
    ``Finished``; a job ends at its own ``max_tokens``, a stop token or a stop string, and the request ends when every
    job has. A ``LuvcError`` or an internal error fails every job of the batch; an internal error is logged with an id,
    and clients get the id, never the exception's text."""
    try:
        _run(pipeline, jobs)
    except LuvcError as error:
        _fail(jobs, Failed(str(error)))
    except Exception:  # a server reports the error to its clients and keeps serving
        _fail(jobs, Failed(internal_error_message("generating a batch"), user_error=False))


def internal_error_message(doing: str) -> str:
    """Log the exception being handled with a fresh id, and the message a client gets for it: the id, nothing
    internal."""
    error_id = uuid.uuid4().hex[:12]
    LOG.exception("internal error %s while %s", error_id, doing)
    return f"Internal error {error_id}; the server logged it. Retry, or report the id to the operator."


def _fail(jobs: Sequence[Job], failure: Failed) -> None:
    for job in jobs:
        job.emit(failure)


def _cancelled(job: Job, tokens: int) -> None:
    """End a cancelled job: its last event says so (a client still listening, as Triton's stream, gets it)."""
    LOG.info("a cancelled request ended after %d tokens", tokens)
    job.emit(Failed(f"The request was cancelled after {tokens} tokens.", user_error=False, cancelled=True))


def _run(pipeline: Pipeline, jobs: Sequence[Job]) -> None:
    streams = [TextStream(pipeline.tokenizer, job.params.stop) for job in jobs]
    samplings = tuple(job.params.sampling for job in jobs)
    options = GenerationOptions(max(job.params.max_tokens for job in jobs), row_sampling=samplings)
    request = pipeline.request(Prepared.stack([job.prepared for job in jobs]), options)
    stop_ids = request.stop_token_ids
    open_rows = set(range(len(jobs)))
    first_token_at = 0.0
    for step in request:
        now = time.perf_counter()
        first_token_at = first_token_at or now
        for row in sorted(open_rows):
            job, stream = jobs[row], streams[row]
            if job.is_cancelled():
                open_rows.discard(row)
                _cancelled(job, step.index)
                continue
            token = int(step.tokens[row])
            stop_token = token in stop_ids
            if not stop_token and (piece := stream.add(token)):
                job.emit(Delta(piece))
            length = step.index + 1 == job.params.max_tokens
            if stop_token or stream.stopped or length:
                if piece := stream.flush():
                    job.emit(Delta(piece))
                reason = "length" if length and not (stop_token or stream.stopped) else "stop"
                completion = len(stream.tokens) + stop_token
                prompt_tokens = job.prepared.prompt_tokens
                ttft, decode = first_token_at - job.submitted, now - first_token_at
                job.emit(Finished(stream.text, reason, prompt_tokens, completion, ttft, decode))
                open_rows.discard(row)
        if not open_rows:
            break
