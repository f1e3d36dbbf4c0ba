"""``GenerationService`` without HTTP: batching of waiting jobs, in-flight joining, answers equal to the pipeline's,
isolation of a failing row, cancellation, the queue-wait limit and draining."""

import threading
import time

import pytest

from luvc.images import synthetic_image
from luvc.runtime.pipeline import GenerationOptions, Pipeline
from luvc.runtime.sampling import SamplingConfig
from luvc.serve.batching import SHUTTING_DOWN, Failed, Finished, QueueClosed
from luvc.serve.service import GenerationService

MODEL = "tiny-qwen2-vl"
PROMPT = "What is in this picture?"
SIX_TOKENS = GenerationOptions(6)


class Events:
    """One job's events, and a flag set at its last one."""

    def __init__(self) -> None:
        self.events, self.ended = [], threading.Event()

    def __call__(self, event) -> None:
        self.events.append(event)
        if isinstance(event, (Finished, Failed)):
            self.ended.set()

    def last(self):
        assert self.ended.wait(60), "the job never ended"
        return self.events[-1]


def _service(exports, **options) -> GenerationService:
    return GenerationService(Pipeline(exports(MODEL)), GenerationOptions(6), **options)


def _submit(service: GenerationService, seed: int, params: GenerationOptions = SIX_TOKENS) -> Events:
    events = Events()
    image = synthetic_image(224, 224, seed)
    service.submit(service.prepare(image, PROMPT, params), params, events)
    return events


def test_waiting_jobs_run_as_one_batch_and_each_gets_the_answer_it_gets_alone(exports):
    service = _service(exports)
    jobs = [_submit(service, seed) for seed in (1, 2, 3)]  # queued before the worker starts: one batch
    service.start()
    try:
        finished = [job.last() for job in jobs]
    finally:
        service.stop()
    reference = Pipeline(exports(MODEL))
    for seed, event in zip((1, 2, 3), finished):
        assert isinstance(event, Finished)
        assert event.text == reference.generate(synthetic_image(224, 224, seed), PROMPT, GenerationOptions(6)).texts[0]
    prefills = {sample.name: sample.value for sample in service.metrics.prefill_batch_size.collect()[0].samples}
    assert prefills["luvc_prefill_batch_size_sum"] == 3.0 and prefills["luvc_prefill_batch_size_count"] == 1.0
    steps = {sample.name: sample.value for sample in service.metrics.batch_size.collect()[0].samples}
    assert steps["luvc_batch_size_sum"] == 3.0 * 5  # five decode steps of the three after the prefill's token


def test_a_cancelled_job_is_dropped_and_its_batch_mates_finish(exports):
    service = _service(exports)
    kept, dropped = Events(), Events()
    params = GenerationOptions(6)
    for seed, events in ((1, kept), (2, dropped)):
        prepared = service.prepare(synthetic_image(224, 224, seed), PROMPT, params)
        job = service.submit(prepared, params, events)
    job.cancel()  # the second job: its client left before the batch ran
    service.start()
    try:
        assert isinstance(kept.last(), Finished)
        time.sleep(0.2)
        assert not any(isinstance(event, Finished) for event in dropped.events)
    finally:
        service.stop()


def test_a_job_that_waited_past_the_queue_timeout_is_answered_unavailable(exports):
    service = _service(exports, queue_timeout_s=0.05)
    late = _submit(service, 1)
    time.sleep(0.2)
    service.start()
    try:
        event = late.last()
    finally:
        service.stop()
    assert isinstance(event, Failed) and event.kind == "unavailable" and "--queue-timeout" in event.message


def test_draining_answers_waiting_jobs_shutting_down_and_takes_no_new_ones(exports):
    service = _service(exports)
    waiting = _submit(service, 1)
    service.drain(timeout_s=1.0)  # the worker never started: the job was waiting
    event = waiting.last()
    assert isinstance(event, Failed) and event.kind == "unavailable" and event.message.startswith(SHUTTING_DOWN)
    with pytest.raises(QueueClosed):
        _submit(service, 2)


def test_a_job_joins_a_running_batch_at_a_step_boundary_and_leaves_before_it_ends(exports):
    # a long greedy image answer is running; a short seeded text-only request (another bucket, another prompt length,
    # another sampling) joins it between two steps, shares its decode steps and finishes first; both answers are
    # the ones they get alone
    service = _service(exports)
    long_params, short_params = GenerationOptions(24), GenerationOptions(3, SamplingConfig(temperature=0.8, seed=5))
    order, lock, first_seen, release = [], threading.Lock(), threading.Event(), threading.Event()

    def recorder(name: str, events: Events, hold: bool = False):
        def record(event) -> None:
            with lock:
                order.append((name, type(event).__name__))
            events(event)
            if hold and not first_seen.is_set():  # the worker waits here, inside the long job's generation
                first_seen.set()
                release.wait(60)

        return record

    long_events, short_events = Events(), Events()
    image = synthetic_image(224, 224, 1)
    service.submit(service.prepare(image, PROMPT, long_params), long_params, recorder("long", long_events, True))
    short = service.prepare(None, "Tell me a story.", short_params)
    service.start()
    try:
        assert first_seen.wait(60)
        service.submit(short, short_params, recorder("short", short_events))
        release.set()
        long_end, short_end = long_events.last(), short_events.last()
    finally:
        service.stop()
    reference = Pipeline(exports(MODEL))
    assert long_end.text == reference.generate(image, PROMPT, GenerationOptions(24)).texts[0]
    short_options = GenerationOptions(3, short_params.sampling)
    assert short_end.text == reference.generate(None, ["Tell me a story."], short_options).texts[0]
    assert order.index(("short", "Finished")) < order.index(("long", "Finished"))
    assert order[0][0] == "long" and ("long", "Finished") == order[-1]
    steps = {sample.name: sample.value for sample in service.metrics.batch_size.collect()[0].samples}
    prefills = {sample.name: sample.value for sample in service.metrics.prefill_batch_size.collect()[0].samples}
    assert prefills["luvc_prefill_batch_size_count"] == 2.0  # two prefills ...
    assert steps["luvc_batch_size_sum"] > steps["luvc_batch_size_count"]  # ... whose rows shared decode steps


def test_a_row_that_fails_mid_generation_ends_alone_and_its_batch_mates_finish(exports):
    service = _service(exports)
    params = GenerationOptions(8)
    kept, broken = Events(), Events()

    def failing(event) -> None:  # this job's own handling fails at its first piece of text
        broken(event)
        if not isinstance(event, (Finished, Failed)):
            raise RuntimeError("this row's client callback broke")

    for seed, emit in ((1, kept), (2, failing)):
        service.submit(service.prepare(synthetic_image(224, 224, seed), PROMPT, params), params, emit)
    service.start()
    try:
        kept_end, broken_end = kept.last(), broken.last()
    finally:
        service.stop()
    reference = Pipeline(exports(MODEL))
    assert isinstance(broken_end, Failed) and broken_end.kind == "internal" and "Internal error" in broken_end.message
    assert isinstance(kept_end, Finished)
    assert kept_end.text == reference.generate(synthetic_image(224, 224, 1), PROMPT, GenerationOptions(8)).texts[0]
