"""Generation jobs for servers: a bounded wait queue, grouping of jobs that can share a prefill, and the in-flight
batch that runs them through a ``Pipeline`` and reports each job's text as it arrives.

Shared by the HTTP server (``luvc.serve.app``) and the Triton model (``luvc.serve.triton_model``). A
``Pipeline`` has one KV cache, so one worker thread owns it; jobs wait in ``JobQueue``.

In-flight batching (``JobRunner``): up to ``max_batch`` jobs decode together in one ``RunningBatch``
(``luvc.runtime.running_batch``), and a waiting job joins at the next step boundary, as soon as a row is free. A
prefill takes jobs of one bucket (``text`` for requests without an image) and video rate; the decode steps after it
are one for every bucket. Prompts of different lengths share a prefill (rows are padded on the right, each with its own
length, visual shift and KV write index), and every row samples by its own temperature, top-k, top-p, penalties and
generator (a seeded row reproduces its seed's answer in any batch). Rows are independent in every graph, so a job's
tokens equal the job's own run, whoever it shared its steps with.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Literal

from luvc.errors import LuvcError
from luvc.runtime.options import GenerationOptions, RowStep
from luvc.runtime.pipeline import Pipeline, Prepared
from luvc.runtime.running_batch import RunningBatch

LOG = logging.getLogger(__name__)
SHUTTING_DOWN = "The server is shutting down; retry on another instance."


class QueueClosed(Exception):
    """The queue takes no more jobs: the server is shutting down."""


@dataclasses.dataclass
class Delta:
    """New text of one job."""

    text: str


@dataclasses.dataclass
class Finished:
    """The end of one job: its whole text, why it ended (``stop``: a stop token or string; ``length``:
    ``max_new_tokens``), token counts, and the time from submission to the first token."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float
    decode_s: float  # from the first token to the last


# "request": a LuvcError, the request can be fixed (400); "internal": the server's error (500); "unavailable": the
# server cannot take it now, shutting down or waited too long: retry (503); "cancelled": the client cancelled it (its
# answer is this event, e.g. Triton's CANCELLED error)
FailureKind = Literal["request", "internal", "unavailable", "cancelled"]


@dataclasses.dataclass
class Failed:
    """A job that could not run; ``message`` says why, ``kind`` what kind of failure it is (``FailureKind``)."""

    message: str
    kind: FailureKind = "request"


Event = Delta | Finished | Failed


@dataclasses.dataclass(eq=False)  # a job is itself: compared by identity
class Job:
    """One prompt and image, prepared by ``Pipeline.prepare`` (a batch of one), generated under ``options``, with a
    callback for its events.
    ``cancel()`` (e.g. a client that went away), or ``client_cancelled()`` turning true (Triton's
    ``request.is_cancelled``), drops it from its batch at the next token."""

    prepared: Prepared
    options: GenerationOptions
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
    def batch_key(self) -> tuple[str, float | None]:
        """Jobs with equal keys share a prefill: those of one bucket (``text`` without an image) and video rate,
        whatever their prompt lengths (rows are padded) and sampling settings (each row samples by its own, seeded
        with its own). Jobs of any keys share the decode steps after it."""
        return self.prepared.bucket_name, self.prepared.seconds_per_slice


class QueueFull(Exception):
    """The wait queue is at its bound; the caller should refuse the job (HTTP 429)."""


class JobQueue:
    """A bounded FIFO of waiting jobs from which a worker takes the oldest job and the waiting jobs that can share
    its batch."""

    def __init__(self, max_waiting: int, bound: str = "the server's --max-queue") -> None:
        self.max_waiting = max_waiting
        self.bound = bound  # what sets max_waiting, named in the refusal
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
                raise QueueFull(f"{len(self._jobs)} requests are waiting ({self.bound}); retry later.")
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


class JobRunner:
    """The jobs generating now on ``pipeline``: up to ``max_batch`` rows of one ``RunningBatch`` (in-flight
    batching), which decides when each ends. ``admit`` prefills waiting jobs and puts them in the batch between two
    steps; ``step`` runs one decode step for every running job and emits its text. A job ends at its own
    ``max_new_tokens``, a stop token, a stop string or its cancellation, and its row is free for the next job at once.

    Failures stay with their jobs: a prefill that fails fails the jobs it admitted; a job whose text cannot be
    emitted ends alone. Only a failed decode step (shared by the rows) fails every running job. An internal error is
    logged with an id; clients get the id, never the exception's text."""

    def __init__(self, pipeline: Pipeline, max_batch: int) -> None:
        self.pipeline = pipeline
        self.max_batch = max_batch
        self.rows: RunningBatch[Job] | None = None  # made at the first admission (it takes the pipeline's KV cache)
        self.running: dict[Job, _Progress] = {}

    @property
    def free(self) -> int:
        """Jobs that can still join."""
        return self.max_batch - len(self.running)

    def admit(self, jobs: Sequence[Job]) -> None:
        """Prefill ``jobs`` (equal batch keys, at most ``free``), emit their first tokens and keep those not yet
        finished running."""
        jobs = list(jobs)
        if not jobs:
            return
        pipeline = self.pipeline
        try:
            if self.rows is None or self.rows.cache.owner is not self.rows:
                self.rows = RunningBatch(pipeline.sessions, pipeline.feeds, self.max_batch, pipeline.tokenizer)
            for job in jobs:
                self.running[job] = _Progress()
            prepared = Prepared.stack([job.prepared for job in jobs])
            _, steps = self.rows.admit(prepared, [job.options for job in jobs], jobs)
        except LuvcError as error:
            self._end_admission(jobs, Failed(str(error)))
            return
        except Exception:  # a server reports the error to its clients and keeps serving
            self._end_admission(jobs, Failed(internal_error_message("prefilling a batch"), "internal"))
            return
        self._emit(steps, time.perf_counter())

    def _end_admission(self, jobs: Sequence[Job], failure: Failed) -> None:
        """Fail ``jobs`` and take back any row they were given."""
        for job in jobs:
            self.running.pop(job, None)
            self._leave(job)
        _fail(jobs, failure)

    def step(self) -> None:
        """One decode step for every running job; each gets its next token (or leaves: done or cancelled)."""
        for job in [job for job in self.running if job.is_cancelled()]:  # a client that left frees its row now
            self._leave(job)
            _cancelled(job, self.running.pop(job).tokens)
        if not self.running or self.rows is None:  # rows come with the first admission
            return
        try:
            steps, _ = self.rows.step()
        except Exception as error:  # a failed step leaves no row trustworthy: every running job ends with it
            jobs, self.running, self.rows = list(self.running), {}, None
            user = isinstance(error, LuvcError)
            message = str(error) if user else internal_error_message("a decode step")
            _fail(jobs, Failed(message, "request" if user else "internal"))
            return
        self._emit(steps, time.perf_counter())

    def _emit(self, steps: Sequence[RowStep], now: float) -> None:
        """Hand each job its step's text; a job whose row ended (or whose event failed) leaves."""
        for step in steps:
            job = step.member
            progress = self.running[job]
            try:
                progress.add(job, step, now)
            except Exception:  # this job's failure is its own
                job.emit(Failed(internal_error_message("finishing a row's text"), "internal"))
                self._leave(job)
                del self.running[job]
                continue
            if step.finished:
                del self.running[job]

    def _leave(self, job: Job) -> None:
        if self.rows is not None and job in self.rows.members:
            self.rows.leave(job)


@dataclasses.dataclass
class _Progress:
    """One running job's text so far, its tokens and when its first token came."""

    text: str = ""
    tokens: int = 0
    first_token_at: float = 0.0

    def add(self, job: Job, step: RowStep, now: float) -> None:
        """Take the job's step: emit the text it made final, and ``Finished`` when the row ended."""
        self.first_token_at = self.first_token_at or now
        self.tokens += 1
        if step.text:
            self.text += step.text
            job.emit(Delta(step.text))
        if step.finish_reason is not None:
            ttft, decode = self.first_token_at - job.submitted, now - self.first_token_at
            job.emit(Finished(self.text, step.finish_reason, job.prepared.prompt_tokens, self.tokens, ttft, decode))


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
    job.emit(Failed(f"The request was cancelled after {tokens} tokens.", "cancelled"))
