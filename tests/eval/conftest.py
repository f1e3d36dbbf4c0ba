import json
from pathlib import Path

import pytest

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
