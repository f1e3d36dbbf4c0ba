import json
from pathlib import Path

import pytest

from luvc.eval.results import Answer, EvalResults, QuestionEntry, Run
from luvc.images import synthetic_image


def write_questions(folder: Path, records: list[dict], images: int = 3, size=(224, 224)) -> Path:
    """A question set in ``folder``: seeded synthetic images ``img/{i}.png`` and ``questions.jsonl`` of ``records``."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for index in range(images):
        synthetic_image(*size, seed=index).save(folder / "img" / f"{index}.png")
    (folder / "questions.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return folder


MIXED = [
    {"id": "dog", "image": "img/0.png", "question": "Is there a dog?", "answer": "yes", "type": "yes-no"},
    {"id": "cat", "image": "img/1.png", "question": "Is there a cat?", "answer": "no", "type": "yes-no"},
    {"id": "color", "image": "img/1.png", "question": "What color?", "answer": ["red", "dark red"], "type": "exact"},
    {
        "id": "shape",
        "image": "img/2.png",
        "question": "Which shape?",
        "choices": ["circle", "square"],
        "answer": "square",
        "type": "multiple-choice",
    },
    {"id": "text", "image": "img/0.png", "question": "What does it say?", "answer": ["INV-0042"], "type": "anls"},
]


@pytest.fixture
def question_set(tmp_path) -> Path:
    """A folder with five questions of every type over three synthetic 224x224 images."""
    return write_questions(tmp_path / "data", MIXED)


def _answer(question: str, read: str, score: float, ttft: float, tokens: list[int]) -> Answer:
    return Answer(question, read, read, score, ttft, tokens, tokens[0], 100, 40, 4, 2048)


@pytest.fixture
def results() -> EvalResults:
    questions = [
        QuestionEntry("a", "yes-no", ["yes"]),
        QuestionEntry("b", "yes-no", ["no"]),
        QuestionEntry("c", "exact", ["red"]),
    ]
    reads = {"none": ("yes", "yes", "red"), "luvc": ("yes", "no", "blue")}
    scores = {"none": (1.0, 0.0, 1.0), "luvc": (1.0, 1.0, 0.0)}
    ttfts = {"none": (10.0, 12.0, 11.0), "luvc": (5.0, 7.0, 6.0)}
    tokens = {"none": ([8, 8], [8, 8], [8, 8]), "luvc": ([4, 0], [4, 0], [4, 2])}
    runs = [
        Run(
            name,
            point,
            "pytorch",
            {},
            [
                _answer(q.id, *values)
                for q, *values in zip(questions, reads[name], scores[name], ttfts[name], tokens[name])
            ],
        )
        for name, point in (("none", ""), ("luvc", "ratio 0.5"))
    ]
    return EvalResults("tiny", "q.jsonl", questions, runs, max_new_tokens=4)
