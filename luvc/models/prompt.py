"""Prompt templates: the text around one image and one user prompt.

A checkpoint with a chat template gets its own: the template is rendered once for a one-turn conversation (an image
and a marker text, with the generation prompt), and the rendered text becomes the template, so the family's default
system turn and any special tokens come along. Without one, the family's built-in template is used. The tokenizer's
BOS token is prepended when the tokenizer adds one (as the family's processor, which tokenizes with special tokens,
does). The export stores the template (manifest ``template``) and the runtime renders prompts from it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from luvc.errors import critical

logger = logging.getLogger("luvc")
IMAGE, PROMPT = "{image}", "{prompt}"
MARKER = "\ue000luvc-prompt\ue001"  # private-use characters no chat template rewrites
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """``text`` holds ``{image}`` (where the image's placeholder tokens go) and ``{prompt}`` once each; ``bos`` is
    prepended to every rendered prompt; ``source`` says where the template came from."""

    text: str
    image_placeholder: str
    bos: str = ""
    source: str = "built-in"

    def __post_init__(self) -> None:
        if self.text.count(IMAGE) != 1 or self.text.count(PROMPT) != 1:
            critical(f"A prompt template needs {IMAGE} and {PROMPT} once each; got {self.text!r}.")

    def render(self, prompt: str, image_tokens: int, placeholder: str | None = None) -> str:
        """The full prompt for one image of ``image_tokens`` tokens (a video: ``placeholder`` is the video's token,
        which takes the image's place in the template). A prompt that already holds the placeholder was written in
        the template: only its placeholder is expanded (it is not wrapped twice)."""
        placeholder = placeholder or self.image_placeholder
        image = placeholder * image_tokens
        if placeholder in prompt:
            if prompt.count(placeholder) != 1:
                critical(
                    f"The prompt holds {prompt.count(placeholder)} image or video placeholders {placeholder!r}; give "
                    "one (one image or video per prompt), or none to use the template."
                )
            text = prompt.replace(placeholder, image)
        else:
            before, after = self.text.split(PROMPT)
            text = before.replace(IMAGE, image) + prompt + after.replace(IMAGE, image)
        return text if not self.bos or text.startswith(self.bos) else self.bos + text


def chat_template_of(tokenizer, folder: str | Path | None = None) -> str | None:
    """The chat template of a checkpoint: the tokenizer's, else the processor's file in ``folder``."""
    if getattr(tokenizer, "chat_template", None):
        template = tokenizer.chat_template
        return template if isinstance(template, str) else None
    for name in CHAT_TEMPLATE_FILES if folder is not None else ():
        path = Path(folder) / name
        if path.is_file():
            text = path.read_text()
            return json.loads(text).get("chat_template") if name.endswith(".json") else text
    return None


def bos_of(tokenizer) -> str:
    """The BOS token text when ``tokenizer`` adds one to what it encodes, else ''."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return ""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token if ids and ids[0] == bos_id else ""


def template_for(tokenizer, image_placeholder: str, builtin: str, chat_template: str | None) -> PromptTemplate:
    """The template of a checkpoint: from ``chat_template`` when given and it renders one image and the text,
    else ``builtin``."""
    bos = bos_of(tokenizer) if tokenizer is not None else ""
    if chat_template:
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": MARKER}]}]
        rendered = tokenizer.apply_chat_template(
            conversation, chat_template=chat_template, tokenize=False, add_generation_prompt=True
        )
        if rendered.count(MARKER) == 1 and rendered.count(image_placeholder) == 1:
            text = rendered.replace(image_placeholder, IMAGE).replace(MARKER, PROMPT)
            if bos and text.startswith(bos):
                text = text[len(bos) :]
            return PromptTemplate(text, image_placeholder, bos, "chat template")
        logger.warning(
            "The chat template does not render one %s and the prompt for an image turn; using the built-in template.",
            image_placeholder,
        )
    return PromptTemplate(builtin, image_placeholder, bos)
