"""Question sets: the format, the prompts built from it, and one clear error for each kind of bad data."""

import json

import pytest

from luvc.errors import LuvcError
from luvc.eval.data import INSTRUCTIONS, load_eval_set
from tests.conftest import png_header, write_clip
from tests.eval.conftest import MIXED, write_questions


def test_a_set_of_every_type(question_set):
    data = load_eval_set(question_set)
    assert [q.id for q in data.questions] == ["dog", "cat", "color", "shape", "text"]
    assert data.types == ("exact", "yes-no", "multiple-choice", "anls")
    shape = data.questions[3]
    assert shape.answers == ("B",)  # the choice's text, as its letter
    assert shape.prompt == "Which shape?\nA. circle\nB. square\n" + INSTRUCTIONS["multiple-choice"]
    assert data.questions[0].prompt == "Is there a dog?\n" + INSTRUCTIONS["yes-no"]
    assert data.questions[2].answers == ("red", "dark red")
    assert load_eval_set(question_set / "questions.jsonl").questions == data.questions  # the file itself
    assert len(load_eval_set(question_set, limit=2).questions) == 2


def test_prompt_ids_and_videos(tmp_path):
    from tests.conftest import write_clip

    folder = write_questions(
        tmp_path,
        [
            {"image": "img/0.png", "question": "q", "prompt": "Say it.", "answer": "x", "type": "exact"},
            {"video": "clip.mp4", "question": "Moving?", "answer": "YES", "type": "yes-no", "frames": 4},
        ],
        images=1,
    )
    write_clip(folder / "clip.mp4", frames=12)
    first, clip = load_eval_set(folder).questions
    assert (first.id, first.prompt) == ("line-1", "Say it.")
    assert (clip.is_video, clip.answers) == (True, ("yes",))
    assert len(clip.load_visual().frames) == 4


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"image": "img/9.png"}, r"line 1: image 'img/9.png' does not exist in"),
        ({"type": "open"}, r"line 1: question type 'open' is not one of \['exact', 'yes-no'"),
        ({"video": "img/0.png"}, "give exactly one of 'image' and 'video'"),
        ({"answer": []}, "'answer' must be a non-empty string or a list"),
        ({"question": ""}, "'question' must be a non-empty string"),
        ({"colour": "red"}, r"unknown field\(s\) \['colour'\]"),
        ({"type": "yes-no", "answer": "maybe"}, "a yes-no question's answer is 'yes' or 'no'"),
        ({"type": "multiple-choice", "answer": "A"}, "needs 'choices', a list of 2 to 26 strings"),
        ({"type": "multiple-choice", "choices": ["x", "y"], "answer": "C"}, "neither a letter A-B nor one of"),
        ({"choices": ["x", "y"]}, "'choices' belong to multiple-choice questions"),
        ({"frames": 4}, "'frames' and 'fps' sample a video"),
        ({"video": "clip.mp4", "image": None, "frames": True}, "'frames' must be a positive integer"),
        ({"video": "clip.mp4", "image": None, "frames": 0}, "'frames' must be a positive integer"),
        ({"video": "clip.mp4", "image": None, "fps": float("nan")}, r"'fps' must be a number in \(0, 240\]"),
        ({"video": "clip.mp4", "image": None, "fps": float("inf")}, r"'fps' must be a number in \(0, 240\]"),
        ({"video": "clip.mp4", "image": None, "fps": 1e9}, r"'fps' must be a number in \(0, 240\]"),
        ({"video": "clip.mp4", "image": None, "fps": "2"}, r"'fps' must be a number in \(0, 240\]"),
        ({"video": "clip.mp4", "image": None, "fps": True}, r"'fps' must be a number in \(0, 240\]"),
        ({"image": "img/huge.png"}, r"img/huge.png \(.* line 1\) is 12000x12000 \(144 MP\), more than the 67 MP"),
    ],
)
def test_bad_questions_are_named_with_their_line(tmp_path, record, message):
    base = {"image": "img/0.png", "question": "What?", "answer": "x", "type": "exact"}
    record = {key: value for key, value in {**base, **record}.items() if value is not None}
    folder = write_questions(tmp_path, [record], images=1)
    write_clip(folder / "clip.mp4", frames=4)
    (folder / "img" / "huge.png").write_bytes(png_header(12000, 12000))
    with pytest.raises(LuvcError, match=message):
        load_eval_set(folder)


def test_a_question_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    folder = write_questions(tmp_path, MIXED)
    lines = (folder / "questions.jsonl").read_bytes().splitlines()
    lines[1] = lines[1].replace(b"?", b"\xe9?")  # Latin-1, as a spreadsheet export may write
    (folder / "questions.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(LuvcError, match=r"questions.jsonl line 2 is not UTF-8 text; save the file as UTF-8"):
        load_eval_set(folder)


def test_bad_files_are_named(tmp_path):
    folder = write_questions(tmp_path / "ok", MIXED)
    (folder / "questions.jsonl").write_text("\n\n")
    with pytest.raises(LuvcError, match="holds no question; write one JSON object per line"):
        load_eval_set(folder)
    (folder / "questions.jsonl").write_text(json.dumps(MIXED[0]) + "\n{oops\n")
    with pytest.raises(LuvcError, match="line 2 is not valid JSON"):
        load_eval_set(folder)
    (folder / "questions.jsonl").write_text(json.dumps(MIXED[0]) + "\n" + json.dumps(MIXED[0]) + "\n")
    with pytest.raises(LuvcError, match="id 'dog' is used twice"):
        load_eval_set(folder)
    (folder / "img" / "0.png").write_text("not a picture")
    (folder / "questions.jsonl").write_text(json.dumps(MIXED[0]) + "\n")
    with pytest.raises(LuvcError, match="Cannot read .* as an image"):
        load_eval_set(folder)
    with pytest.raises(LuvcError, match="has no questions.jsonl"):
        load_eval_set(tmp_path)
    with pytest.raises(LuvcError, match="does not exist; pass a folder with questions.jsonl"):
        load_eval_set(tmp_path / "missing")
