"""Scoring by question type, against hand-made answers."""

import pytest

from luvc.eval.data import Question
from luvc.eval.scoring import anls, choice_letter, exact_match, normalize, score, yes_no, yes_no_metrics


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The Two dogs!", "2 dogs"),
        ("  a   RED  bus. ", "red bus"),
        ("3.5 metres", "3.5 metres"),  # a decimal point stays
        ("ten, then eleven", "10 then eleven"),  # number words up to ten only
        ("it's an apple", "it s apple"),
    ],
)
def test_normalize(text, normalised):
    assert normalize(text) == normalised


def test_exact_match_after_normalisation():
    assert exact_match("The red bus.", ["red bus"]).value == 1.0
    assert exact_match("Two", ["2", "two dogs"]).value == 1.0
    assert exact_match("red buses", ["red bus"]).value == 0.0
    assert exact_match("The red bus.", ["x"]).read == "red bus"


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("Yes, there is a dog.", "yes"),
        ("No.", "no"),
        ("There is not a dog in the image.", "no"),
        ("NO", "no"),
        ("Yes. No dog is missing.", "yes"),  # POPE reads the first sentence only
        ("I think so", "yes"),  # POPE counts anything without no/not as yes
    ],
)
def test_yes_no_reads_answers_as_pope_does(answer, label):
    assert yes_no(answer) == label


def test_yes_no_metrics_by_hand():
    metrics = yes_no_metrics(["yes", "yes", "no", "no", "yes"], ["yes", "no", "no", "yes", "yes"])
    # true positives 2, said yes 3, are yes 3
    assert metrics.accuracy == pytest.approx(3 / 5)
    assert (metrics.precision, metrics.recall, metrics.f1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert metrics.yes_ratio == pytest.approx(3 / 5)
    assert yes_no_metrics(["no", "no"], ["yes", "no"]).f1 == 0.0  # no positive answer: no precision


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("B. cat", "B"),
        ("A) dog", "A"),
        ("The answer is C.", "C"),
        ("Answer: a", "A"),
        ("cat", "B"),  # the one choice named
        ("A cat.", "B"),  # "A" is an article here, not a letter
        ("a cat or a dog", None),  # two choices named
        ("concatenate", None),  # whole words only
        ("E", None),  # no such option
    ],
)
def test_choice_letter(answer, letter):
    assert choice_letter(answer, ["dog", "cat", "bird"]) == letter


def test_anls_thresholds():
    assert anls("INV-0042", ["inv-0042"]).value == 1.0  # case and surrounding spaces ignored
    assert anls("INV-0043", ["INV-0042"]).value == pytest.approx(1 - 1 / 8)
    assert anls("abcdefghij", ["abcdef0000"]).value == pytest.approx(0.6)  # distance 0.4 < 0.5
    assert anls("abcde00000", ["abcdefghij"]).value == 0.0  # distance 0.5: not below the threshold
    assert anls("total 10", ["total: 10", "10"]).value == pytest.approx(1 - 1 / 9)  # the closest answer


def _question(kind: str, answers, choices=()) -> Question:
    from pathlib import Path

    return Question("q", 1, Path("x.png"), False, "?", tuple(answers), kind, tuple(choices))


def test_score_by_type():
    assert score(_question("yes-no", ["no"]), "No, it is not.").value == 1.0
    assert score(_question("yes-no", ["no"]), "Yes").read == "yes"
    assert score(_question("multiple-choice", ["B"], ["dog", "cat"]), "(B)").value == 1.0
    assert score(_question("multiple-choice", ["B"], ["dog", "cat"]), "no idea").read == ""
    assert score(_question("anls", ["hello"]), "hallo").value == pytest.approx(0.8)
    assert score(_question("exact", ["two"]), "2").value == 1.0
