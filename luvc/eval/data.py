"""Evaluation sets: a folder of images (or videos) and a JSONL file of questions with their answers and types.

``DATA`` is a folder holding ``questions.jsonl``, or a ``.jsonl`` file; media paths are relative to the file's
folder. One JSON object per line:

    {"id": "q1", "image": "img/cat.jpg", "question": "Is there a cat?", "answer": "yes", "type": "yes-no"}
    {"image": "img/bus.jpg", "question": "What color is the bus?", "answer": ["red", "dark red"], "type": "exact"}
    {"image": "img/cat.jpg", "question": "Which animal?", "choices": ["dog", "cat"], "answer": "B",
     "type": "multiple-choice"}
    {"image": "scans/invoice.png", "question": "Invoice number?", "answer": ["INV-0042"], "type": "anls"}
    {"video": "clips/ball.mp4", "question": "Does the ball bounce?", "answer": "yes", "type": "yes-no", "frames": 8}

- ``image`` or ``video`` (exactly one): a file (a video may be a folder of frames), relative to the folder.
- ``question``; ``answer``: one string or a list of accepted strings (multiple choice: the letter or the choice's text).
- ``type``: ``exact``, ``yes-no``, ``multiple-choice`` (with ``choices``, 2 to 26 strings, lettered A, B, ...) or
  ``anls``; it picks the scoring (``luvc.eval.scoring``) and the instruction appended to the question.
- optional: ``id`` (default ``line-N``), ``prompt`` (the whole prompt, used as written instead of the question, its
  choices and the instruction), ``frames`` or ``fps`` (video sampling; default 2 frames a second, as ``run``).
"""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path

from PIL import Image

from luvc.errors import critical
from luvc.images import check_image_file, load_image
from luvc.videos import MAX_SAMPLED_FPS, Video, load_sampled_video

QUESTIONS_FILE = "questions.jsonl"
# the instruction after each type's question: LLaVA-1.5's evaluation prompts (VQAv2/TextVQA/POPE, MMBench)
INSTRUCTIONS = {
    "exact": "Answer the question using a single word or phrase.",
    "yes-no": "Answer the question using a single word or phrase.",
    "multiple-choice": "Answer with the option's letter from the given choices directly.",
    "anls": "Answer the question using a single word or phrase.",
}
QUESTION_TYPES = tuple(INSTRUCTIONS)
FIELDS = ("id", "image", "video", "question", "answer", "type", "choices", "prompt", "frames", "fps")


@dataclasses.dataclass(frozen=True)
class Question:
    """One question of an evaluation set, checked: its media file, text, accepted answers and type."""

    id: str
    line: int
    media: Path
    is_video: bool
    question: str
    answers: tuple[str, ...]
    type: str
    choices: tuple[str, ...] = ()
    prompt_text: str | None = None
    frames: int | None = None
    fps: float | None = None

    @property
    def prompt(self) -> str:
        """The user prompt: ``prompt`` as written, else the question, its lettered choices and the type's
        instruction."""
        if self.prompt_text is not None:
            return self.prompt_text
        options = [f"{letter}. {choice}" for letter, choice in zip(string.ascii_uppercase, self.choices)]
        return "\n".join([self.question, *options, INSTRUCTIONS[self.type]])

    def load_visual(self) -> Image.Image | Video:
        """The question's image, or its video sampled as asked (default: 2 frames a second of a file)."""
        if not self.is_video:
            return load_image(self.media)
        return load_sampled_video(self.media, num_frames=self.frames, fps=self.fps)


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """The questions of one JSONL file (``source``), media resolved against ``folder``."""

    source: Path
    questions: tuple[Question, ...]

    @property
    def types(self) -> tuple[str, ...]:
        """The question types present, in ``QUESTION_TYPES`` order."""
        present = {question.type for question in self.questions}
        return tuple(kind for kind in QUESTION_TYPES if kind in present)


def questions_file(data: str | Path) -> Path:
    """The JSONL file of ``data``: the file itself, or a folder's ``questions.jsonl``."""
    path = Path(data)
    if path.is_dir():
        path = path / QUESTIONS_FILE
        if not path.is_file():
            critical(f"{data} has no {QUESTIONS_FILE}; write one question per line in it (see `luvc-export eval -h`).")
        return path
    if not path.is_file():
        critical(f"--data {data} does not exist; pass a folder with {QUESTIONS_FILE} or a .jsonl file.")
    if path.suffix != ".jsonl":
        critical(f"--data {data} is not a .jsonl file; pass a folder with {QUESTIONS_FILE} or a .jsonl file.")
    return path


def load_eval_set(data: str | Path, limit: int | None = None) -> EvalSet:
    """Read and check the questions of ``data`` (at most ``limit``, in file order); any problem is one error naming
    the file, the line and the fix."""
    source = questions_file(data)
    questions, seen = [], set()
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        bad_line = source.read_bytes()[: error.start].count(b"\n") + 1
        critical(f"{source} line {bad_line} is not UTF-8 text; save the file as UTF-8.")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        question = _question(source, number, line)
        if question.id in seen:
            critical(f"{source} line {number}: id {question.id!r} is used twice; give every question its own id.")
        seen.add(question.id)
        questions.append(question)
        if limit is not None and len(questions) == limit:
            break
    if not questions:
        critical(f"{source} holds no question; write one JSON object per line (see `luvc-export eval -h`).")
    return EvalSet(source, tuple(questions))


def _question(source: Path, number: int, line: str) -> Question:
    where = f"{source} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        critical(f"{where} is not valid JSON ({error.msg} at column {error.colno}); write one JSON object per line.")
    if not isinstance(record, dict):
        critical(f"{where} is not a JSON object; write one object per line with image, question, answer and type.")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        critical(f"{where}: unknown field(s) {unknown}; the fields are {list(FIELDS)}.")
    kind = record.get("type")
    if kind not in INSTRUCTIONS:
        critical(f"{where}: question type {kind!r} is not one of {list(QUESTION_TYPES)}.")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        critical(f"{where}: 'question' must be a non-empty string.")
    media, is_video = _media(source, where, record)
    choices = _choices(where, record, kind)
    answers = _answers(where, record, kind, choices)
    prompt = record.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        critical(f"{where}: 'prompt' must be a non-empty string (or left out).")
    frames, fps = record.get("frames"), record.get("fps")
    if (frames is not None or fps is not None) and not is_video:
        critical(f"{where}: 'frames' and 'fps' sample a video; this question has an image.")
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
        critical(f"{where}: 'frames' must be a positive integer.")
    if fps is not None and (
        isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= MAX_SAMPLED_FPS
    ):
        critical(f"{where}: 'fps' must be a number in (0, {MAX_SAMPLED_FPS:g}].")
    identifier = record.get("id", f"line-{number}")
    return Question(
        str(identifier), number, media, is_video, question, answers, kind, choices, prompt, frames, fps and float(fps)
    )


def _media(source: Path, where: str, record: dict) -> tuple[Path, bool]:
    """The question's image or video path, checked: it exists and (an image) opens as one."""
    given = [key for key in ("image", "video") if key in record]
    if len(given) != 1:
        critical(f"{where}: give exactly one of 'image' and 'video' (a path relative to {source.parent}).")
    (key,) = given
    if not isinstance(record[key], str) or not record[key]:
        critical(f"{where}: '{key}' must be a path relative to {source.parent}.")
    path = source.parent / record[key]
    if not path.exists():
        critical(f"{where}: {key} {record[key]!r} does not exist in {source.parent}; add the file or fix the path.")
    if key == "image":
        check_image_file(path, f"{path} ({where})")
    return path, key == "video"


def _choices(where: str, record: dict, kind: str) -> tuple[str, ...]:
    choices = record.get("choices")
    if kind != "multiple-choice":
        if choices is not None:
            critical(f"{where}: 'choices' belong to multiple-choice questions; this one is {kind}.")
        return ()
    if not isinstance(choices, list) or not 2 <= len(choices) <= 26 or not all(isinstance(c, str) for c in choices):
        critical(f"{where}: a multiple-choice question needs 'choices', a list of 2 to 26 strings.")
    return tuple(choices)


def _answers(where: str, record: dict, kind: str, choices: tuple[str, ...]) -> tuple[str, ...]:
    answer = record.get("answer")
    answers = [answer] if isinstance(answer, str) else answer
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        critical(f"{where}: 'answer' must be a non-empty string or a list of them.")
    if kind == "yes-no":
        labels = {a.strip().lower() for a in answers}
        if not labels <= {"yes", "no"} or len(labels) != 1:
            critical(f"{where}: a yes-no question's answer is 'yes' or 'no', got {answer!r}.")
        return (labels.pop(),)
    if kind == "multiple-choice":
        letters = string.ascii_uppercase[: len(choices)]
        if len(answers) != 1:
            critical(f"{where}: a multiple-choice question has one answer (a letter or a choice), got {answer!r}.")
        given = answers[0].strip()
        if given.upper() in letters and len(given) == 1:
            return (given.upper(),)
        if given in choices:
            return (letters[choices.index(given)],)
        critical(f"{where}: answer {given!r} is neither a letter {letters[0]}-{letters[-1]} nor one of the choices.")
    return tuple(answers)
