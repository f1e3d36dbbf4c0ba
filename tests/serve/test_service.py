"""``GenerationService`` without HTTP: batching of waiting jobs, answers equal to the pipeline's, cancellation,
the queue-wait limit and draining."""

import threading
import time

import pytest

from luvc.images import synthetic_image
from luvc.runtime.pipeline import GenerationOptions, Pipeline
from luvc.serve.batching import SHUTTING_DOWN, Failed, Finished, GenerationParams, QueueClosed
from luvc.serve.service import GenerationService

MODEL = "tiny-qwen2-vl"
PROMPT = "What is in this picture?"
SIX_TOKENS = GenerationParams(6)


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
    return GenerationService(Pipeline(exports(MODEL)), GenerationParams(6), **options)


def _submit(service: GenerationService, seed: int, params: GenerationParams = SIX_TOKENS) -> Events:
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
    batches = service.metrics.batch_size.collect()[0].samples
    assert {sample.name: sample.value for sample in batches}["luvc_batch_size_sum"] == 3.0  # one batch of three
    assert {sample.name: sample.value for sample in batches}["luvc_batch_size_count"] == 1.0


def test_a_cancelled_job_is_dropped_and_its_batch_mates_finish(exports):
    service = _service(exports)
    kept, dropped = Events(), Events()
    params = GenerationParams(6)
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
    assert isinstance(event, Failed) and event.unavailable and "--queue-timeout" in event.message


def test_draining_answers_waiting_jobs_shutting_down_and_takes_no_new_ones(exports):
    service = _service(exports)
    waiting = _submit(service, 1)
    service.drain(timeout_s=1.0)  # the worker never started: the job was waiting
    event = waiting.last()
    assert isinstance(event, Failed) and event.unavailable and event.message.startswith(SHUTTING_DOWN)
    with pytest.raises(QueueClosed):
        _submit(service, 2)
