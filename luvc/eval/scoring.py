"""Scoring by question type: what each answer counts, and what the scorer read from it (for agreement).

- ``exact``: 1 when the normalised answer equals a normalised accepted answer. Normalisation (after the VQA
  evaluation's): lower case, punctuation dropped (a decimal point between digits stays), the articles a/an/the
  dropped, number words zero to ten written as digits, whitespace collapsed.
- ``yes-no``: the answer read as POPE reads it (its first sentence; "no" or "not" among the words: no; else yes),
  1 when it matches. Over a set, accuracy, precision, recall and F1 of "yes", and the share of "yes" answers.
- ``multiple-choice``: the option letter read from the answer (a bare letter, "(B)", "B.", "answer: B", or else
  the one choice whose text the answer contains), 1 when it is the right letter.
- ``anls``: average normalised Levenshtein similarity (DocVQA/ST-VQA): ``1 - NL`` for the closest accepted answer
  when the normalised edit distance ``NL`` (case and surrounding spaces ignored) is below 0.5, else 0.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Sequence

from rapidfuzz.distance import Levenshtein

from luvc.eval.data import Question

ANLS_THRESHOLD = 0.5
NUMBER_WORDS = {
    word: str(number) for number, word in enumerate("zero one two three four five six seven eight nine ten".split())
}
ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = re.compile(r"(?<!\d)\.(?!\d)|[^\w\s.]")  # a period between digits is a decimal point: kept
_LETTER_PATTERNS = (
    re.compile(r"^\(?([A-Z])(?:[.:,)]|$)"),  # "B", "(B)", "B.", "B) cat", "B: cat" (not "A cat": an article)
    re.compile(r"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-Z])\b", re.IGNORECASE),
)


@dataclasses.dataclass(frozen=True)
class Score:
    """An answer's score in [0, 1] and what scoring read from it (compared across methods for agreement)."""

    value: float
    read: str


def normalize(text: str) -> str:
    """VQA-style normalisation of a free-form answer (see the module docstring)."""
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return " ".join(NUMBER_WORDS.get(word, word) for word in words if word not in ARTICLES)


def exact_match(prediction: str, answers: Sequence[str]) -> Score:
    """1 when ``prediction`` equals one of ``answers`` after normalisation."""
    read = normalize(prediction)
    return Score(float(read in {normalize(answer) for answer in answers}), read)


def yes_no(prediction: str) -> str:
    """``"yes"`` or ``"no"`` as POPE reads an answer: its first sentence, commas dropped; "no" or "not" among its
    words means no, anything else yes."""
    first = prediction.split(".")[0].replace(",", "")
    words = {word.strip(string.punctuation).lower() for word in first.split()}
    return "no" if words & {"no", "not"} else "yes"


def choice_letter(prediction: str, choices: Sequence[str]) -> str | None:
    """The option letter an answer gives (``None`` when it gives none, or several choices' texts)."""
    letters = string.ascii_uppercase[: len(choices)]
    text = prediction.strip()
    for pattern in _LETTER_PATTERNS:
        found = pattern.search(text)
        if found and found.group(1).upper() in letters:
            return found.group(1).upper()
    words = f" {normalize(text)} "
    named = [
        letter for letter, choice in zip(letters, choices) if normalize(choice) and f" {normalize(choice)} " in words
    ]
    return named[0] if len(named) == 1 else None


def anls(prediction: str, answers: Sequence[str], threshold: float = ANLS_THRESHOLD) -> Score:
    """Average normalised Levenshtein similarity of ``prediction`` to its closest accepted answer."""
    read = " ".join(prediction.lower().split())
    best = 0.0
    for answer in answers:
        distance = Levenshtein.normalized_distance(read, " ".join(answer.lower().split()))
        best = max(best, 1.0 - distance if distance < threshold else 0.0)
    return Score(best, read)


def score(question: Question, prediction: str) -> Score:
    """``prediction`` scored by ``question``'s type against its accepted answers."""
    if question.type == "yes-no":
        read = yes_no(prediction)
        return Score(float(read == question.answers[0]), read)
    if question.type == "multiple-choice":
        letter = choice_letter(prediction, question.choices)
        return Score(float(letter == question.answers[0]), letter or "")
    if question.type == "anls":
        return anls(prediction, question.answers)
    return exact_match(prediction, question.answers)


@dataclasses.dataclass(frozen=True)
class YesNoMetrics:
    """POPE's metrics over yes-no questions ("yes" is the positive class)."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float


def yes_no_metrics(read: Sequence[str], truth: Sequence[str]) -> YesNoMetrics:
    """POPE's metrics of the answers ``read`` (``"yes"``/``"no"``) against ``truth``."""
    pairs = list(zip(read, truth))
    true_positive = sum(r == "yes" and t == "yes" for r, t in pairs)
    said_yes = sum(r == "yes" for r, _ in pairs)
    are_yes = sum(t == "yes" for _, t in pairs)
    precision = true_positive / said_yes if said_yes else 0.0
    recall = true_positive / are_yes if are_yes else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = sum(r == t for r, t in pairs) / len(pairs) if pairs else 0.0
    return YesNoMetrics(accuracy, precision, recall, f1, said_yes / len(pairs) if pairs else 0.0)
