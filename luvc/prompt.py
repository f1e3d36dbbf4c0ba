"""Prompt templates: the text around one image and one user prompt, and conversations.

A checkpoint with a chat template gets its own: the template is rendered once for a one-turn conversation (an image
and a marker text, with the generation prompt), and the rendered text becomes the template, so the family's default
system turn and any special tokens come along. Without one, the family's built-in template is used. The tokenizer's
BOS token is prepended when the tokenizer adds one (as the family's processor, which tokenizes with special tokens,
does). The export stores the template (manifest ``template``) and the runtime renders prompts from it.

A conversation (``Turn``s: a system turn, earlier user and assistant turns, the request's visual in any user turn)
is rendered by the chat template itself (``PromptTemplate.chat_template``: the checkpoint's, else the family's
built-in one, ``simple_chat_template``), so its system prompt and history land where the model was trained to see
them; the visual's placeholder is then expanded as in a one-turn prompt.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from luvc.errors import critical

IMAGE, PROMPT = "{image}", "{prompt}"
VIDEO_FRAME_SECONDS = "{seconds}"  # in a frame template: the timestamp of the frame's temporal slice
VIDEO_FRAME_TOKENS = "{frame}"  # in a frame template: where the slice's placeholder tokens go
MARKER = "\ue000luvc-prompt\ue001"  # private-use characters no chat template rewrites
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")


def role_of(value: str) -> Role:
    """``value`` as a turn's role, or one line naming the roles."""
    for role in ROLES:
        if value == role:
            return role
    critical(f"{value!r} is not a role; give one of {list(ROLES)}.")


@dataclasses.dataclass(frozen=True)
class Turn:
    """One turn of a conversation: its ``role`` (``system``, ``user``, ``assistant``), its text, and whether the
    request's image or video goes before the text (one user turn of a conversation may hold it)."""

    role: Role
    text: str
    visual: bool = False


@dataclasses.dataclass(frozen=True)
class Conversation:
    """A prompt of several turns (checked when made, ``check_conversation``): a system turn first, earlier user and
    assistant turns, and the user turn to answer last; the request's visual goes in the turn marked ``visual``."""

    turns: tuple[Turn, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "turns", tuple(self.turns))
        check_conversation(self.turns)

    @property
    def has_visual(self) -> bool:
        return any(turn.visual for turn in self.turns)


def check_conversation(turns: Sequence[Turn]) -> None:
    """One line naming what is wrong with ``turns``: an unknown role, a system turn after the first, no user turn
    to answer last, or a visual in more than one turn or outside a user turn."""
    if not turns:
        critical("A conversation needs at least one user turn.")
    for index, turn in enumerate(turns):
        if turn.role not in ROLES:
            critical(f"Turn {index} has role {turn.role!r}; give one of {list(ROLES)}.")
        if turn.role == "system" and index:
            critical(f"Turn {index} is a system turn; give the system prompt as the first turn only.")
        if turn.visual and turn.role != "user":
            critical(f"Turn {index} ({turn.role}) holds the image or video; put it in a user turn.")
    if turns[-1].role != "user":
        critical(f"The last turn is the {turns[-1].role}'s; end the conversation with the user turn to answer.")
    visuals = sum(turn.visual for turn in turns)
    if visuals > 1:
        critical(f"{visuals} turns hold an image or video; an export takes one per request.")


def simple_chat_template(turn_start: str, turn_end: str, image: str, generation: str) -> str:
    """A Jinja chat template of turns ``turn_start`` (a Jinja expression of ``role``, e.g. ``'USER: '``) + content +
    ``turn_end``, an image part rendered as ``image``, and ``generation`` after the last turn: the family's built-in
    template for checkpoints without one (its one-turn rendering is the built-in ``PromptTemplate``)."""
    return (
        "{% for message in messages %}{% set role = message['role'] %}{{ " + turn_start + " }}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ " + json.dumps(image) + " }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{{ " + json.dumps(turn_end) + " }}{% endfor %}"
        "{% if add_generation_prompt %}{{ " + json.dumps(generation) + " }}{% endif %}"
    )


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """``text`` holds ``{image}`` (where the image's placeholder tokens go) and ``{prompt}`` once each; ``bos`` is
    prepended to every rendered prompt; ``source`` says where the template came from; ``chat_template`` is the Jinja
    template conversations are rendered with (``text`` is its one-turn rendering)."""

    text: str
    image_placeholder: str
    bos: str = ""
    source: str = "built-in"
    chat_template: str | None = None

    def __post_init__(self) -> None:
        if self.text.count(IMAGE) != 1 or self.text.count(PROMPT) != 1:
            critical(f"A prompt template needs {IMAGE} and {PROMPT} once each; got {self.text!r}.")

    def render(self, prompt: str, image_tokens: int, placeholder: str | None = None, visual: str | None = None) -> str:
        """The full prompt for one image of ``image_tokens`` tokens. For a video, ``placeholder`` is its token and
        ``visual`` the text that takes the template's ``{image}`` (default: the placeholder repeated; a Qwen3-VL
        video: ``video_text``). A prompt that already holds the placeholder was written in the template: only its
        placeholder is expanded (it is not wrapped twice)."""
        placeholder = placeholder or self.image_placeholder
        image = placeholder * image_tokens if visual is None else visual
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


def render_conversation(template: PromptTemplate, tokenizer, conversation: Conversation) -> str:
    """``conversation`` in ``template``'s chat template with the generation prompt, the visual's turn holding the
    image placeholder once (``PromptTemplate.render`` expands it), BOS first when the template has one."""
    turns = conversation.turns
    if template.chat_template is None:
        critical("This export holds no chat template to render conversations with; re-export it with this luvc-export.")
    messages = [
        {
            "role": turn.role,
            "content": [{"type": "image"}, {"type": "text", "text": turn.text}] if turn.visual else turn.text,
        }
        for turn in turns
    ]
    text = tokenizer.apply_chat_template(
        messages, chat_template=template.chat_template, tokenize=False, add_generation_prompt=True
    )
    return text if not template.bos or text.startswith(template.bos) else template.bos + text


def video_text(placeholder: str, tokens: int, frame_template: str | None = None, seconds: Sequence[float] = ()) -> str:
    """The text of a video of ``tokens`` LLM tokens: ``placeholder`` repeated, or (``frame_template``, Qwen3-VL) one
    block per temporal slice, the template's ``{seconds}`` taking that slice's timestamp (one decimal) and its
    ``{frame}`` the slice's share of the placeholders."""
    if frame_template is None:
        return placeholder * tokens
    per_slice = tokens // len(seconds)
    return "".join(
        frame_template.replace(VIDEO_FRAME_SECONDS, f"{moment:.1f}").replace(
            VIDEO_FRAME_TOKENS, placeholder * per_slice
        )
        for moment in seconds
    )


def token_runs(ids: Sequence[int], token_id: int) -> tuple[tuple[int, int], ...]:
    """``(start, length)`` of every run of ``token_id`` in prompt ``ids``: where its images' (or video slices')
    placeholders sit."""
    runs: list[list[int]] = []
    for position, token in enumerate(ids):
        if token != token_id:
            continue
        if runs and runs[-1][0] + runs[-1][1] == position:
            runs[-1][1] += 1
        else:
            runs.append([position, 1])
    return tuple((start, length) for start, length in runs)


def chat_template_of(tokenizer, folder: str | Path | None = None) -> str | None:
    """The chat template of a checkpoint: the processor's file in ``folder`` (the multimodal one, as the family's
    processor renders with it), else the tokenizer's."""
    paths = [Path(folder) / name for name in CHAT_TEMPLATE_FILES] if folder is not None else []
    for path in paths:
        if path.is_file():
            return _template_file(path)
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) and template else None


def _template_file(path: Path) -> str:
    """The template text of a ``chat_template.jinja`` or ``chat_template.json``, or one line naming what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
        template = json.loads(text).get("chat_template") if path.suffix == ".json" else text
    except (UnicodeDecodeError, ValueError, AttributeError) as error:
        critical(f"Cannot read the chat template {path} ({error}); copy it again from the checkpoint.")
    if not isinstance(template, str) or not template.strip():
        critical(f"{path} holds no chat template text; copy it again from the checkpoint, or delete it.")
    return template


def bos_of(tokenizer) -> str:
    """The BOS token text when ``tokenizer`` adds one to what it encodes, else ''."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return ""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token if ids and ids[0] == bos_id else ""


def template_for(
    tokenizer, image_placeholder: str, builtin: str, chat_template: str | None, builtin_chat: str | None = None
) -> PromptTemplate:
    """The template of a checkpoint: from ``chat_template`` when given and it renders one image and the text,
    else ``builtin`` (conversations then render with ``builtin_chat``)."""
    bos = bos_of(tokenizer) if tokenizer is not None else ""
    if not chat_template:
        return PromptTemplate(builtin, image_placeholder, bos, chat_template=builtin_chat)
    from jinja2 import TemplateError

    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": MARKER}]}]
    try:
        rendered = tokenizer.apply_chat_template(
            conversation, chat_template=chat_template, tokenize=False, add_generation_prompt=True
        )
    except (TemplateError, TypeError, ValueError, KeyError, IndexError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        critical(
            f"The checkpoint's chat template does not render an image turn ({reason}); fix it (chat_template.jinja, "
            "chat_template.json or tokenizer_config.json's chat_template), or delete it to use the family's built-in "
            "template."
        )
    if rendered.count(MARKER) != 1 or rendered.count(image_placeholder) != 1:
        critical(
            f"The checkpoint's chat template renders {rendered.count(image_placeholder)} image placeholders "
            f"{image_placeholder!r} and {rendered.count(MARKER)} prompts for a turn with one image and one text, so it "
            "is not this vision model's template; use the processor's chat_template.jinja from the checkpoint, or "
            "delete the template to use the family's built-in one."
        )
    text = rendered.replace(image_placeholder, IMAGE).replace(MARKER, PROMPT)
    if bos and text.startswith(bos):
        text = text[len(bos) :]
    return PromptTemplate(text, image_placeholder, bos, "chat template", chat_template)
