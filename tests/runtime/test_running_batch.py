"""In-flight batching: rows join a running batch between decode steps and leave when they are done. A row of any
bucket (or none), prompt length and sampling must get the tokens it gets alone, whoever shares its steps."""

import numpy as np
import pytest

from luvc.errors import LuvcError
from luvc.images import synthetic_image
from luvc.runtime.pipeline import GenerationOptions, Pipeline
from luvc.runtime.prefill import run_prefill
from luvc.runtime.running_batch import RunningBatch
from luvc.runtime.sampling import SamplingConfig

TOKENS = 6
GREEDY = SamplingConfig()
SEEDED = SamplingConfig(temperature=0.9, top_p=0.9, seed=7)
PENALIZED = SamplingConfig(frequency_penalty=1.5)


@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-llava"])
def test_rows_that_join_and_leave_between_steps_get_the_tokens_they_get_alone(exports, family):
    pipeline = Pipeline(exports(family))
    second_size = list(pipeline.manifest.buckets.values())[-1].image_size  # Qwen2-VL's second bucket, LLaVA's only
    rows = {  # member: (prepared, sampling, the step at which it joins)
        "image": (pipeline.prepare([synthetic_image(224, 224, 1)], ["Describe the image."]), GREEDY, 0),
        "text": (pipeline.prepare(None, ["Tell me a short story about a red bicycle, please."]), SEEDED, 2),
        "other": (pipeline.prepare([synthetic_image(*second_size, 2)], ["What is it?"]), PENALIZED, 3),
    }
    alone = {
        member: pipeline.generate(prepared, options=GenerationOptions(TOKENS, sampling, stop_token_ids=())).tokens[0]
        for member, (prepared, sampling, _) in rows.items()
    }
    batch = RunningBatch(pipeline.sessions, pipeline.feeds, capacity=3)
    got: dict[str, list[int]] = {member: [] for member in rows}
    sizes_seen = []
    for step in range(2 * TOKENS):
        for member, (prepared, sampling, joins_at) in rows.items():
            if joins_at == step:
                prefill = run_prefill(pipeline.sessions, pipeline.feeds, prepared)
                joined = batch.admit(prefill, [sampling], [member])
                got[member].append(int(batch.choose(prefill.outputs["logits"], joined)[0]))
        if step:
            if not batch.size:
                break
            sizes_seen.append(batch.size)
            for member, token in zip(list(batch.members), batch.step()):
                got[member].append(int(token))
        for member in [member for member in batch.members if len(got[member]) == TOKENS]:
            batch.leave(member)  # the last row moves into its place
    for member in rows:
        np.testing.assert_array_equal(got[member], alone[member], err_msg=member)
    assert 3 in sizes_seen and sizes_seen[-1] < 3  # all three decoded together, and the batch shrank as rows left


def test_a_batch_refuses_more_rows_than_it_holds(exports):
    pipeline = Pipeline(exports("tiny-llava"))
    prepared = pipeline.prepare([synthetic_image(224, 224, s) for s in (1, 2)], ["Describe the image."] * 2)
    batch = RunningBatch(pipeline.sessions, pipeline.feeds, capacity=1)
    with pytest.raises(LuvcError, match="2 rows do not fit a running batch with 1 free rows of 1"):
        batch.admit(run_prefill(pipeline.sessions, pipeline.feeds, prepared), [GREEDY] * 2, ["a", "b"])
    with pytest.raises(LuvcError, match="no rows has nothing to decode"):
        batch.decode()
