"""Prompt templates: rendering, and a checkpoint's chat template giving the prompt ids its family's own processor
gives, apart from the image-token count (the merged grid's)."""

import numpy as np
import pytest
import torch
from tokenizers import processors
from transformers import LlavaProcessor, Qwen2VLProcessor

from luvc import LuvcError, load_model
from luvc.compress.config import LUVCConfig
from luvc.images import synthetic_image
from luvc.models.generation import greedy_generate
from luvc.prompt import Conversation, PromptTemplate, Turn, render_conversation
from tests.chat_templates import LLAVA_1_5, QWEN2_VL

CONVERSATION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
PROMPT = "What is in the image?"


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor without its video processor, which needs torchvision (not installable beside the CPU
    torch wheel here); images and text go through the upstream code unchanged."""

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]


def test_render_wraps_a_prompt_and_expands_the_image():
    template = PromptTemplate("USER: {image}\n{prompt} ASSISTANT:", "<image>", bos="<s>")
    assert template.render("Hi?", 3) == "<s>USER: <image><image><image>\nHi? ASSISTANT:"


def test_a_prompt_written_in_the_template_is_not_wrapped_twice():
    template = PromptTemplate("USER: {image}\n{prompt} ASSISTANT:", "<image>", bos="<s>")
    assert template.render("USER: <image>\nHi? ASSISTANT:", 2) == "<s>USER: <image><image>\nHi? ASSISTANT:"
    assert template.render("<s>USER: <image>\nHi? ASSISTANT:", 2) == "<s>USER: <image><image>\nHi? ASSISTANT:"
    with pytest.raises(LuvcError, match="holds 2 image or video placeholders"):
        template.render("<image> and <image>", 2)


def test_a_template_without_both_fields_is_refused():
    with pytest.raises(LuvcError, match="needs {image} and {prompt} once each"):
        PromptTemplate("USER: {prompt}", "<image>")


def collapse(ids, image_token_id: int) -> tuple[list[int], int]:
    """The ids with the image-token run shortened to one token, and the run's length."""
    ids = list(ids)
    first = ids.index(image_token_id)
    count = ids.count(image_token_id)
    assert ids[first : first + count] == [image_token_id] * count
    return ids[: first + 1] + ids[first + count :], count


def save_checkpoint(family: str, folder, chat_template: str, template_file: bool = False, bos: bool = False):
    adapter = load_model(family)
    tokenizer = adapter.tokenizer
    if bos:  # a tokenizer that adds BOS, as Llama's does
        tokenizer.add_special_tokens({"bos_token": "<s>"})
        template = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)])
        tokenizer._tokenizer.post_processor = template
    if template_file:  # the processor's chat_template.jinja, as recent checkpoints ship it
        (folder / "chat_template.jinja").write_text(chat_template)
    else:
        tokenizer.chat_template = chat_template
    for part in (adapter.model, tokenizer, adapter.image_processor):
        part.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory):
    return save_checkpoint("tiny-qwen2-vl", tmp_path_factory.mktemp("qwen"), QWEN2_VL, template_file=True)


def test_qwen_prompt_ids_equal_the_qwen2_vl_processor_apart_from_the_image_count(qwen_checkpoint):
    adapter = load_model(qwen_checkpoint)
    adapter.apply_luvc()
    assert adapter.template.source == "chat template"
    image = synthetic_image(224, 224, 1)
    ours = adapter.prepare_inputs([image], PROMPT)["input_ids"][0].tolist()
    processor = ImageOnlyQwen2VLProcessor(adapter.image_processor, adapter.tokenizer, chat_template=QWEN2_VL)
    text = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    theirs = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    ours, our_count = collapse(ours, adapter.image_token_id)
    theirs, their_count = collapse(theirs, adapter.image_token_id)
    assert ours == theirs
    assert adapter.tokenizer.decode(ours).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert our_count == adapter.plan(adapter.preprocess_images([image])).tokens_per_image[0] == their_count // 2


def test_llava_prompt_ids_equal_the_llava_processor_with_bos_apart_from_the_image_count(tmp_path):
    adapter = load_model(save_checkpoint("tiny-llava", tmp_path, LLAVA_1_5, bos=True))
    adapter.apply_luvc()
    image = synthetic_image(224, 224, 1)
    ours = adapter.prepare_inputs([image], PROMPT)["input_ids"][0].tolist()
    config = adapter.model.config
    processor = LlavaProcessor(
        adapter.image_processor,
        adapter.tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=LLAVA_1_5,
    )
    text = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    theirs = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    ours, our_count = collapse(ours, adapter.image_token_id)
    theirs, their_count = collapse(theirs, adapter.image_token_id)
    assert ours == theirs and ours[0] == adapter.tokenizer.bos_token_id
    assert our_count == adapter.plan(adapter.preprocess_images([image])).tokens_per_image[0] < their_count
    templated = adapter.prepare_inputs([image], f"USER: <image>\n{PROMPT} ASSISTANT:")["input_ids"]
    assert torch.equal(templated, adapter.prepare_inputs([image], PROMPT)["input_ids"])  # not wrapped twice


@pytest.mark.slow
def test_onnx_runtime_reproduces_pytorch_on_chat_template_prompts(qwen_checkpoint, tmp_path):
    from luvc.export.exporter import export_model
    from luvc.export.profile import ExportProfile
    from luvc.runtime.pipeline import GenerationOptions, Pipeline

    adapter = load_model(qwen_checkpoint)
    export = export_model(adapter, tmp_path / "export", ExportProfile(image_sizes=((224, 224),)), show_progress=False)
    adapter.apply_luvc()
    image = synthetic_image(224, 224, 3)
    inputs = adapter.prepare_inputs([image], PROMPT)
    pipeline = Pipeline(export)
    assert pipeline.manifest.template.source == "chat template"
    np.testing.assert_array_equal(pipeline.prepare([image], [PROMPT]).input_ids, inputs["input_ids"].numpy())
    with torch.no_grad():
        expected = greedy_generate(adapter.model, inputs, 8).numpy()
    np.testing.assert_array_equal(pipeline.generate(image, PROMPT, GenerationOptions(8)).tokens, expected)


def test_a_spu_start_past_the_model_suggests_one_that_fits():
    with pytest.raises(
        LuvcError,
        match=r"spu_start=2 does not fit a model with 2 decoder layers; use 0..1 "
        r"\(CLI: --option spu_start=1\)",
    ):
        LUVCConfig().resolve(vision_depth=2, num_layers=2)


@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-internvl", "tiny-llava"])
def test_built_in_chat_template_renders_the_built_in_one_turn_template(family):
    adapter = load_model(family)
    template = adapter.template
    assert template.source == "built-in" and template.chat_template
    turn = Conversation((Turn("user", "Describe it.", visual=True),))
    assert render_conversation(template, adapter.tokenizer, turn) == template.render("Describe it.", 1)
    conversation = Conversation(
        (Turn("system", "Be brief."), Turn("user", "Hi", visual=True), Turn("assistant", "Hello"), Turn("user", "More"))
    )
    text = render_conversation(template, adapter.tokenizer, conversation)
    assert text.count(adapter.image_placeholder) == 1
    assert text.index("Be brief.") < text.index(adapter.image_placeholder) < text.index("Hello") < text.index("More")


@pytest.mark.parametrize(
    ("turns", "message"),
    [
        ((), "at least one user turn"),
        ((Turn("user", "a"), Turn("system", "b"), Turn("user", "c")), "system prompt as the first turn only"),
        ((Turn("user", "a"), Turn("assistant", "b", visual=True), Turn("user", "c")), "put it in a user turn"),
        ((Turn("user", "a", visual=True), Turn("assistant", "b")), "end the conversation with the user turn"),
        ((Turn("user", "a", visual=True), Turn("assistant", "b"), Turn("user", "c", visual=True)), "one per request"),
        ((Turn("tool", "a"),), "role 'tool'"),
    ],
)
def test_conversations_are_checked_when_made(turns, message):
    with pytest.raises(LuvcError, match=message):
        Conversation(turns)
