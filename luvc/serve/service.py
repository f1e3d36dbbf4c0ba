"""``GenerationService``: one ``Pipeline`` behind a bounded queue, driven by one worker thread that runs the jobs as
one in-flight batch (``luvc.serve.batching``). The HTTP app submits jobs and reads their events."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from luvc.prompt import Conversation
from luvc.runtime.options import GenerationOptions
from luvc.runtime.pipeline import Pipeline, Prepared
from luvc.runtime.user_text import UserTextGuard
from luvc.serve.batching import SHUTTING_DOWN, Event, Failed, Finished, Job, JobQueue, JobRunner
from luvc.serve.metrics import ServerMetrics
from luvc.standalone_tokenizer import ready_for_conversations


class GenerationService:
    """Owns ``pipeline`` (opened with every bucket's sessions by ``start``) and a worker thread.

    ``max_queue`` bounds the jobs waiting behind the running batch (more get ``QueueFull``, naming ``queue_bound``);
    ``max_batch`` (default: the export profile's) bounds the jobs generating together; ``defaults`` fill what a
    request leaves out; local image paths are read only inside ``image_folder``."""

    def __init__(
        self,
        pipeline: Pipeline,
        defaults: GenerationOptions,
        max_queue: int = 64,
        max_batch: int | None = None,
        image_folder: Path | None = None,
        queue_timeout_s: float | None = None,
        queue_bound: str = "the server's --max-queue",
    ) -> None:
        self.pipeline = pipeline
        self.defaults = defaults
        self.max_batch = max_batch or pipeline.manifest.profile.max_batch
        self.image_folder = image_folder
        self.queue_timeout_s = queue_timeout_s  # a job that waited longer is answered 503 instead of run
        self.queue = JobQueue(max_queue, queue_bound)
        self.metrics = ServerMetrics()
        self.metrics.watch_cuda_graphs(pipeline.sessions.replay_counts)
        self.user_text = UserTextGuard.for_pipeline(pipeline)  # what a client's text may hold
        self._prepare_lock = threading.Lock()  # tokenizers and image processors are not thread-safe
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self.draining = False  # shutting down: new requests are refused, the running batch gets a deadline
        self._running: Sequence[Job] = ()
        self._idle = threading.Condition()

    @property
    def healthy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def start(self) -> GenerationService:
        """Open every session and load what chat templates render with (so the first request pays no load time), and
        start the worker."""
        self.pipeline.load()
        ready_for_conversations(self.pipeline.tokenizer)
        self._worker = threading.Thread(target=self._work, name="luvc-generation", daemon=True)
        self._worker.start()
        return self

    def drain(self, timeout_s: float) -> None:
        """Shut down gently: refuse new requests (``draining``), answer the waiting ones "shutting down, retry",
        let the running batch finish for up to ``timeout_s`` seconds, then end its rows with an error."""
        self.draining = True
        self._refuse_waiting()
        with self._idle:
            finished = self._idle.wait_for(lambda: not self._running, timeout=max(timeout_s, 0.0))
            cut = [] if finished else list(self._running)
        for job in cut:
            job.cancel()
            job.emit(Failed(f"{SHUTTING_DOWN} The answer was cut at the drain timeout.", "unavailable"))

    def stop(self) -> None:
        """Finish the running batch, fail the jobs still waiting, and join the worker."""
        self._stopping.set()
        self._refuse_waiting()
        if self._worker is not None:
            self._worker.join()

    def _refuse_waiting(self) -> None:
        """Close the queue and answer every job still waiting "shutting down, retry"."""
        for job in self.queue.close():
            job.emit(Failed(SHUTTING_DOWN, "unavailable"))

    def check_max_new_tokens(self, max_new_tokens: int, label: str | None = None) -> None:
        """Refuse a generation length the export cannot give; ``label`` names it as the client sent it."""
        self.pipeline.manifest.profile.check_max_new_tokens(max_new_tokens, label)

    def prepare(self, image: Image.Image | None, prompt: str | Conversation, options: GenerationOptions) -> Prepared:
        """Check the client's text (``user_text``: every turn's, and all of it together against the length bound),
        preprocess and tokenize one request (``image=None``: a text-only one), and check its length against the
        export (errors: ``LuvcError``)."""
        self.check_max_new_tokens(options.max_new_tokens)
        texts = [turn.text for turn in prompt.turns] if isinstance(prompt, Conversation) else [prompt]
        for text in texts:
            self.user_text.check(text)
        if len(texts) > 1:
            self.user_text.check("\n".join(texts))  # the length bound holds for the turns together
        with self._prepare_lock:
            return self.pipeline.prepare(None if image is None else [image], [prompt])

    def submit(
        self,
        prepared: Prepared,
        options: GenerationOptions,
        emit: Callable[[Event], object],  # what it returns is ignored
        client_cancelled: Callable[[], bool] | None = None,
    ) -> Job:
        """Queue a prepared request; ``emit`` receives its events on the worker thread; ``client_cancelled`` (e.g.
        Triton's ``request.is_cancelled``) is asked once a step. ``QueueFull`` when full."""
        job = Job(prepared, options, self._observed(emit), client_cancelled=client_cancelled)
        self.queue.put(job)
        self.metrics.queue_depth.set(len(self.queue))
        bucket = prepared.bucket
        if bucket is not None:
            self.metrics.visual_tokens.labels("llm_input").inc(bucket.tokens_per_image)
            self.metrics.visual_tokens.labels("llm_layers").inc(sum(bucket.budgets))
        self.metrics.bucket_requests.labels(prepared.bucket_name, "fitted" if prepared.fitted else "as_sent").inc()
        return job

    def _within_queue_timeout(self, jobs: list[Job]) -> list[Job]:
        """The jobs that waited no longer than ``queue_timeout_s``; the others are answered 503."""
        if self.queue_timeout_s is None:
            return jobs
        now = time.perf_counter()
        late = [job for job in jobs if now - job.submitted > self.queue_timeout_s]
        for job in late:
            job.emit(
                Failed(
                    f"The request waited over {self.queue_timeout_s:g} s in the queue (--queue-timeout); retry later.",
                    "unavailable",
                )
            )
        return [job for job in jobs if job not in late]

    def _observed(self, emit: Callable[[Event], object]) -> Callable[[Event], None]:
        def observe(event: Event) -> None:
            if isinstance(event, Finished):
                self.metrics.time_to_first_token.observe(event.time_to_first_token_s)
                self.metrics.generated_tokens.inc(event.completion_tokens)
                if event.decode_s > 0 and event.completion_tokens > 1:
                    self.metrics.decode_tokens_per_second.observe((event.completion_tokens - 1) / event.decode_s)
            emit(event)

        return observe

    def _work(self) -> None:
        """The worker: waiting jobs join the running batch at every step boundary while it has free rows (in-flight
        batching); it stops once told to and nothing runs, or once draining and the queue is empty."""
        runner = JobRunner(self.pipeline, self.max_batch)
        while not (self._stopping.is_set() and not runner.running):
            idle_wait = 0.0 if runner.running else 0.1
            while runner.free and (jobs := self.queue.take(runner.free, timeout=idle_wait)):
                idle_wait = 0.0
                if admitted := self._within_queue_timeout(jobs):
                    self.metrics.prefill_batch_size.observe(len(admitted))
                    runner.admit(admitted)
            self.metrics.queue_depth.set(len(self.queue))
            self._set_running(list(runner.running))
            if not runner.running:
                if self.draining:  # the queue is closed and empty: nothing more will come
                    break
                continue
            self.metrics.batch_size.observe(len(runner.running))
            runner.step()
        self._set_running([])

    def _set_running(self, jobs: list[Job]) -> None:
        with self._idle:
            self._running = jobs
            if not jobs:
                self._idle.notify_all()
