"""Prompts the template did not foresee: system prompts, conversations with the visual in any user turn, text before
the visual tokens shorter than the template's, and rows of different lengths in one batch. Each row's greedy tokens
must equal PyTorch LUVC's for that row alone, which places the visual tokens where the row's ids have them."""

import numpy as np
import pytest
import torch

from luvc.errors import LuvcError
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.generation import greedy_generate
from luvc.prompt import Conversation, Turn, render_conversation
from luvc.runtime.pipeline import GenerationOptions, Pipeline
from luvc.runtime.sampling import SamplingConfig
from luvc.videos import Video, synthetic_video
from tests.conftest import EXPORT_MATRIX, VIDEO_BUCKETS, VIDEO_LUVC

STEPS = 10
CONVERSATION = Conversation(
    (
        Turn("system", "You answer in one short sentence, and never in a list."),
        Turn("user", "Hello there."),
        Turn("assistant", "Hello! How can I help?"),
        Turn("user", "What is in this picture?", visual=True),
    )
)
LATER_VISUAL = Conversation(
    (
        Turn("user", "Look at this.", visual=True),
        Turn("assistant", "I see it."),
        Turn("user", "Now describe its colours in detail, please."),
    )
)


def _pytorch_alone(adapter, visual, prompt) -> np.ndarray:
    """PyTorch LUVC's greedy tokens for one row: a conversation is rendered by the adapter's own chat template
    (the adapter's prepare_inputs then only expands the placeholder in it)."""
    if isinstance(prompt, Conversation):
        prompt = render_conversation(adapter.template, adapter.tokenizer, prompt)
        if isinstance(visual, Video):  # the chat template renders an image part; the clip's placeholder takes it
            prompt = prompt.replace(adapter.image_placeholder, adapter.video_placeholder)
    inputs = adapter.prepare_inputs([visual], prompt)
    with torch.no_grad():
        tokens = greedy_generate(adapter.model, inputs, STEPS, eos_token_id=adapter.tokenizer.eos_token_id)
    return tokens.numpy()[0], inputs["input_ids"].numpy()[0]


def _rows_equal_pytorch(adapter, pipeline: Pipeline, visuals: list, prompts: list):
    """Each row of one batch of ``visuals`` and ``prompts`` generates what PyTorch LUVC generates for it alone;
    returns the prepared batch."""
    prepared = pipeline.prepare(visuals, prompts)
    tokens, _, _ = pipeline.greedy(prepared, STEPS)
    for row, (visual, prompt) in enumerate(zip(visuals, prompts)):
        expected, ids = _pytorch_alone(adapter, visual, prompt)
        length = prepared.prompts.lengths[row]
        np.testing.assert_array_equal(prepared.input_ids[row, :length], ids)
        np.testing.assert_array_equal(tokens[row], expected, err_msg=f"row {row}")
    return prepared


@pytest.mark.parametrize("family", EXPORT_MATRIX)
def test_conversation_rows_of_different_lengths_equal_pytorch_luvc_alone(family, exports):
    adapter = load_model(family)
    adapter.apply_luvc()
    pipeline = Pipeline(exports(family))
    images = [synthetic_image(224, 224, seed) for seed in (7, 8, 9)]
    prompts = [CONVERSATION, "What is in this picture?", LATER_VISUAL]
    prepared = _rows_equal_pytorch(adapter, pipeline, images, prompts)
    lengths, shifts = prepared.prompts.lengths, prepared.prompts.visual_shifts
    assert len(set(lengths.tolist())) == 3  # three prompt lengths in one batch, padded on the right
    assert shifts[1] == 0 and shifts[0] > 0 and shifts[2] == 0  # the system turn and history move the visuals


def test_text_before_the_visuals_shorter_than_the_template_s(exports):
    # a prompt written in the template with less text before the image than the template has: a negative shift
    adapter = load_model("tiny-qwen2-vl")
    adapter.apply_luvc()
    pipeline = Pipeline(exports("tiny-qwen2-vl"))
    short = "<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n<|im_start|>assistant\n"
    images = [synthetic_image(224, 224, 5), synthetic_image(224, 224, 6)]
    prepared = _rows_equal_pytorch(adapter, pipeline, images, [short, CONVERSATION])
    assert prepared.prompts.visual_shifts[0] < 0 < prepared.prompts.visual_shifts[1]


@pytest.mark.parametrize("family", ["tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_video_conversation_equals_pytorch_luvc_alone(family, video_exports):
    # Qwen2.5-VL: time positions that start after a shifted prefix; Qwen3-VL: one span per slice and DeepStack planes
    adapter = load_model(family)
    adapter.apply_luvc(VIDEO_LUVC)
    clips = [synthetic_video(*VIDEO_BUCKETS[family], seed=seed) for seed in (3, 4)]
    prepared = _rows_equal_pytorch(adapter, Pipeline(video_exports(family)), clips, [CONVERSATION, "Describe it."])
    assert prepared.bucket.frames == 8 and prepared.prompts.visual_shifts[0] > 0


def test_conversations_that_cannot_run_are_refused_in_one_line(exports):
    pipeline = Pipeline(exports("tiny-llava"))
    image = synthetic_image(224, 224, 1)
    text_only = Conversation((Turn("user", "Hello."),))
    with pytest.raises(LuvcError, match="no turn with the image or video"):
        pipeline.prepare([image], text_only)
    with pytest.raises(LuvcError, match="2 image or video placeholders"):
        pipeline.prepare([image], Conversation((Turn("user", "<image> and", visual=True),)))
    long_history = Conversation((Turn("system", "word " * 400), Turn("user", "Describe it.", visual=True)))
    with pytest.raises(LuvcError, match=r"text tokens beyond the template's prefix .* --max-text-tokens"):
        pipeline.prepare([image], long_history)


def _pytorch_text_only(adapter, conversation: Conversation) -> np.ndarray:
    """PyTorch LUVC's greedy tokens for a prompt without visuals, rendered by the adapter's chat template."""
    text = render_conversation(adapter.template, adapter.tokenizer, conversation)
    ids = torch.tensor([adapter.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        tokens = greedy_generate(adapter.model, {"input_ids": ids}, STEPS, eos_token_id=adapter.tokenizer.eos_token_id)
    return tokens.numpy()[0]


@pytest.mark.parametrize("family", EXPORT_MATRIX)
def test_text_only_turns_of_different_lengths_equal_pytorch_luvc_alone(family, exports):
    # no visual: the export's text prefill graph, then the same decode graph as every bucket
    adapter = load_model(family)
    adapter.apply_luvc()
    pipeline = Pipeline(exports(family))
    prompts = [
        "Hello.",
        Conversation((Turn("system", "Answer briefly."), Turn("user", "Name three colours of the rainbow."))),
    ]
    prepared = pipeline.prepare(None, prompts)
    assert prepared.bucket is None and prepared.bucket_name == "text" and prepared.pixels == ()
    tokens, _, _ = pipeline.greedy(prepared, STEPS)
    for row, prompt in enumerate(prompts):
        conversation = prompt if isinstance(prompt, Conversation) else Conversation((Turn("user", prompt),))
        np.testing.assert_array_equal(tokens[row], _pytorch_text_only(adapter, conversation), err_msg=f"row {row}")
    assert prepared.prompts.lengths[0] < prepared.prompts.lengths[1]


def test_a_text_only_prompt_longer_than_the_caches_hold_is_refused(exports):
    pipeline = Pipeline(exports("tiny-llava"))
    longest = pipeline.manifest.longest_text_prompt
    with pytest.raises(LuvcError, match=rf"has \d+ tokens but this export holds at most {longest} .*--max-text-tokens"):
        pipeline.prepare(None, "word " * (2 * longest))
    with pytest.raises(LuvcError, match="marks a turn with an image or video but the request has none"):
        pipeline.prepare(None, CONVERSATION)


def test_rows_with_their_own_sampling_share_a_batch_and_each_gets_its_own_tokens(exports):
    # greedy, seeded sampling, sampling with top-k and top-p, penalised greedy: each row as it runs alone
    pipeline = Pipeline(exports("tiny-qwen2-vl"))
    images = [synthetic_image(224, 224, seed) for seed in (31, 32, 33, 34)]
    prompts = ["What is in this picture?", CONVERSATION, "Describe it.", LATER_VISUAL]
    samplings = (
        SamplingConfig(),
        SamplingConfig(temperature=0.9, seed=5),
        SamplingConfig(temperature=1.3, top_k=20, top_p=0.8, seed=11),
        SamplingConfig(presence_penalty=1.5, frequency_penalty=0.5),
    )
    batch = pipeline.generate(images, prompts, GenerationOptions(STEPS, row_sampling=samplings))
    for row, (image, prompt, sampling) in enumerate(zip(images, prompts, samplings)):
        alone = pipeline.generate(image, prompt, GenerationOptions(STEPS, sampling=sampling))
        np.testing.assert_array_equal(batch.tokens[row], alone.tokens[0], err_msg=f"row {row}")
    other_seed = pipeline.generate(
        images[1], prompts[1], GenerationOptions(STEPS, sampling=SamplingConfig(0.9, seed=6))
    )
    assert not np.array_equal(other_seed.tokens[0], batch.tokens[1])  # the seed decides the sampled row
    with pytest.raises(LuvcError, match="row_sampling has 2 settings for a batch of 4; give one per row"):
        pipeline.generate(images, prompts, GenerationOptions(STEPS, row_sampling=samplings[:2]))
