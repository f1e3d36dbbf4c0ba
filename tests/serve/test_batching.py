"""``JobQueue``: the bound, and which waiting jobs share a batch."""

import numpy as np
import pytest

from luvc.export.buckets import bucket_name
from luvc.export.manifest_entries import BucketEntry
from luvc.runtime.options import GenerationOptions
from luvc.runtime.pipeline import Prepared
from luvc.runtime.prompt_ids import PromptRows
from luvc.runtime.sampling import SamplingConfig
from luvc.serve.batching import Failed, Job, JobQueue, QueueFull

GREEDY = GenerationOptions(8)


def bucket(size: tuple[int, int]) -> BucketEntry:
    name = bucket_name(size)
    return BucketEntry(size, 4, 16, 0, 1, (4, 0), (1,), (1,), 5, ("4", "4"), f"vision_{name}", f"prefill_{name}", "h")


def job(size=(224, 224), length=20, params=GREEDY) -> Job:
    prompts = PromptRows.of([[0] * length], [0])
    prepared = Prepared(prompts, (np.zeros((1, 3), np.float32),), bucket(size))
    return Job(prepared, params, lambda event: None)


def test_a_full_queue_refuses_the_next_job():
    queue = JobQueue(max_waiting=2)
    queue.put(job())
    queue.put(job())
    with pytest.raises(QueueFull, match="2 requests are waiting"):
        queue.put(job())
    assert len(queue) == 2


def test_take_groups_the_oldest_job_with_later_jobs_of_its_bucket_in_order_whatever_their_length_and_sampling():
    queue = JobQueue(16)
    first, other_size, same, other_length, sampled, text_only = (
        job(),
        job(size=(168, 252)),
        job(),
        job(length=21),
        job(params=GenerationOptions(8, SamplingConfig(temperature=0.7, seed=3))),
        Job(Prepared(PromptRows.of([[0] * 9], [0]), (), None), GREEDY, lambda event: None),
    )
    for item in (first, other_size, same, other_length, sampled, text_only):
        queue.put(item)
    assert queue.take(max_batch=4) == [first, same, other_length, sampled]  # any lengths, any sampling
    assert queue.take(max_batch=4) == [other_size]
    assert queue.take(max_batch=4) == [text_only]  # no image: the text prefill's own batch
    assert queue.take(max_batch=4, timeout=0.01) == []


def test_take_stops_at_max_batch():
    queue = JobQueue(16)
    jobs = [job() for _ in range(5)]
    for item in jobs:
        queue.put(item)
    assert queue.take(max_batch=2) == jobs[:2]
    assert queue.take(max_batch=2) == jobs[2:4]


def test_cancelled_jobs_are_dropped_and_close_returns_the_waiting_ones():
    queue = JobQueue(16)
    cancelled, kept, waiting = job(), job(), job(size=(168, 252))
    for item in (cancelled, kept, waiting):
        queue.put(item)
    cancelled.cancel()
    assert queue.take(4) == [kept]
    assert queue.close() == [waiting]
    assert queue.take(4, timeout=1.0) == []  # closed: returns at once


def test_a_job_its_client_cancelled_while_waiting_ends_with_a_cancelled_event_and_is_not_taken():
    queue = JobQueue(16)
    events = []
    gone = Job(job().prepared, GREEDY, events.append, client_cancelled=lambda: True)
    kept = job()
    queue.put(gone)
    queue.put(kept)
    assert queue.take(max_batch=4) == [kept]
    (event,) = events
    assert isinstance(event, Failed) and event.kind == "cancelled"
    assert "cancelled after 0 tokens" in event.message
