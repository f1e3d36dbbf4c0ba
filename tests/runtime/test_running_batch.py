"""In-flight batching: rows join a running batch between decode steps and leave when they are done. A row of any
bucket (or none), prompt length and sampling must get the tokens it gets alone, whoever shares its steps."""

import numpy as np
import pytest

from luvc.errors import LuvcError
from luvc.images import synthetic_image
from luvc.runtime.pipeline import GenerationOptions, Pipeline
from luvc.runtime.running_batch import RunningBatch
from luvc.runtime.sampling import SamplingConfig
from tests import generation_cases as shared

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
        steps = []
        for member, (prepared, sampling, joins_at) in rows.items():
            if joins_at == step:
                steps += batch.admit(prepared, [GenerationOptions(TOKENS, sampling, stop_token_ids=())], [member])[1]
        if step and batch.size:
            sizes_seen.append(batch.size)
            steps += batch.step()[0]
        for row_step in steps:
            got[row_step.member].append(row_step.token)
            assert row_step.finished == (len(got[row_step.member]) == TOKENS)  # the loop ends each row at its length
        if step and not batch.size and all(got.values()):
            break
    for member in rows:
        np.testing.assert_array_equal(got[member], alone[member], err_msg=member)
    assert 3 in sizes_seen and sizes_seen[-1] < 3  # all three decoded together, and the batch shrank as rows left


def test_a_batch_refuses_more_rows_than_it_holds(exports):
    pipeline = Pipeline(exports("tiny-llava"))
    prepared = pipeline.prepare([synthetic_image(224, 224, s) for s in (1, 2)], ["Describe the image."] * 2)
    batch = RunningBatch(pipeline.sessions, pipeline.feeds, capacity=1)
    with pytest.raises(LuvcError, match="2 rows do not fit a running batch with 1 free rows of 1"):
        batch.admit(prepared, [GenerationOptions()] * 2, ["a", "b"])
    with pytest.raises(LuvcError, match="no rows has nothing to decode"):
        batch.decode()


def test_the_loop_ends_each_row_at_its_length_stop_string_or_stop_token_and_applies_its_penalty(exports):
    """The generation cases every front end shares (tests.generation_cases), as rows of one running batch."""
    pipeline = Pipeline(exports("tiny-qwen2-vl"))
    reference = shared.Reference.of(pipeline)
    stop_at = 3  # the reference's fourth token, which it has not produced before
    assert reference.tokens.index(reference.tokens[stop_at]) == stop_at
    stop_token = GenerationOptions(shared.TOKENS, stop_token_ids=(reference.tokens[stop_at],))
    cases = reference.cases()
    options = [case.options() for case in cases] + [stop_token]
    prepared = pipeline.prepare([shared.image()] * len(options), [shared.PROMPT] * len(options))
    batch = RunningBatch(pipeline.sessions, pipeline.feeds, len(options), pipeline.tokenizer)
    _, steps = batch.admit(prepared, options, range(len(options)))
    texts, tokens, reasons = [""] * len(options), [[] for _ in options], [None] * len(options)
    while True:
        for row_step in steps:
            assert reasons[row_step.member] is None  # a row ends once, and then leaves
            texts[row_step.member] += row_step.text
            tokens[row_step.member].append(row_step.token)
            reasons[row_step.member] = row_step.finish_reason
        if not batch.size:
            break
        steps, _ = batch.step()
    for row, case in enumerate(cases):
        reference.check(case, shared.Answer(texts[row], reasons[row], len(tokens[row])))
    assert shared.penalty_breaks_repeats(tokens[[case.name for case in cases].index("penalty")])
    assert tokens[-1] == list(reference.tokens[: stop_at + 1]) and reasons[-1] == "stop"
    assert reference.text.startswith(texts[-1]) and len(texts[-1]) < len(reference.text)


def test_stop_strings_need_a_tokenizer_and_are_checked_where_the_options_are_made(exports):
    pipeline = Pipeline(exports("tiny-llava"))
    batch = RunningBatch(pipeline.sessions, pipeline.feeds, capacity=1)
    with pytest.raises(LuvcError, match="Stop strings need the text of each row"):
        batch.admit(pipeline.prepare(None, ["hi"]), [GenerationOptions(4, stop=("x",))], ["a"])
    with pytest.raises(LuvcError, match="stop has 5 strings; give at most 4"):
        GenerationOptions(stop=("a", "b", "c", "d", "e"))
    with pytest.raises(LuvcError, match="A stop string must be text of 1 to 256 characters"):
        GenerationOptions(stop=("",))
    with pytest.raises(LuvcError, match="A stop string must be valid Unicode text; .* holds a lone surrogate"):
        GenerationOptions(stop=("x\ud800",))  # no text can hold it: taken silently, it would never stop anything
    assert GenerationOptions(stop=("caf\u00e9",)).stop == ("café",)
