"""``luvc-export eval`` from the command line: the report folder, and one line with exit code 2 for bad input."""

import json

import pytest

from luvc.cli.main import main
from tests.conftest import leftovers, one_line_error
from tests.eval.conftest import MIXED, write_questions

pytestmark = pytest.mark.eval


def test_eval_writes_the_report_and_prints_the_table(tmp_path, capsys):
    out, data = tmp_path / "report", write_questions(tmp_path / "data", MIXED)
    argv = ["eval", "--model", "tiny-llava", "--data", str(data), "--methods", "luvc,dart,visionzip"]
    assert main([*argv, "--ratios", "0.5,0.25", "--max-new-tokens", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dart @ ratio 0.25 (pytorch)" in printed and str(out / "report.md") in printed
    saved = json.loads((out / "eval.json").read_text())
    assert [run["method"] for run in saved["runs"]] == ["none"] + ["luvc"] * 2 + ["dart"] * 2 + ["visionzip"] * 2
    assert saved["runs"][3]["config"]["spu_variant"] == "dart" and saved["runs"][3]["config"]["oim_layers"] == []
    assert (out / "pareto.png").is_file() and leftovers(tmp_path) == []


def test_eval_sweep_prints_the_front_and_the_winners(tmp_path, capsys):
    out, data = tmp_path / "report", write_questions(tmp_path / "data", MIXED[:2])
    argv = ["eval", "--model", "tiny-qwen3-vl", "--data", str(data), "--sweep", "input,lowpass", "--ratios", "0.25"]
    assert main([*argv, "--max-new-tokens", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sweep: Pareto front (cheapest first): luvc[" in printed and "sweep: best on yes-no: luvc[" in printed
    saved = json.loads((out / "eval.json").read_text())
    assert len(saved["runs"]) == 1 + 4 and saved["sweep_axes"] == ["input", "lowpass"]
    assert (out / "sweep.json").is_file() and (out / "sweep.png").is_file()


def test_default_report_folder_is_beside_the_data_and_names_the_model(tmp_path, capsys):
    data = write_questions(tmp_path / "photos", MIXED[:1])
    assert main(["eval", "--model", "tiny-qwen2-vl", "--data", str(data), "--methods", "none"]) == 0
    assert (tmp_path / "photos-eval-tiny-qwen2-vl" / "report.md").is_file()
    assert main(["eval", "--model", "tiny-qwen2-vl", "--data", str(data), "--methods", "none"]) == 2  # taken
    assert "already exists; choose another --out or pass --overwrite" in capsys.readouterr().err


BAD = [  # what to change in the question set or the flags -> what the one-line error says
    ({"image": "img/7.png"}, (), "image 'img/7.png' does not exist in"),
    ({"type": "caption"}, (), "question type 'caption' is not one of"),
    (None, (), "holds no question"),
    ({}, ("--export", "EXPORT", "--methods", "luvc"), "so --methods would be ignored"),
    ({}, ("--backend", "ort"), "pass --export EXPORT_DIR too"),
    ({}, ("--ratios", "0.5", "--budgets", "8,0"), "--ratios and --budgets both give budget points"),
    ({}, ("--ratios", "half"), "is not a comma-separated list of numbers in (0, 1]"),
    ({}, ("--ratios", "1.5"), "1.5 is not in (0, 1]"),
    ({}, ("--budgets", "auto"), "--budgets takes explicit per-layer budgets"),
    ({}, ("--methods", "luvc,tome"), "['tome'] is not among"),
    ({}, ("--model", "tiny-qwen3.5", "--methods", "luvc,fastv"), "fastv rank(s) visual tokens by a decoder layer's"),
    ({}, ("--methods", "luvc", "--ratios", "0.9"), "luvc at ratio 0.9 would give the LLM"),
    ({}, ("--num-samples", "0"), "--num-samples 0: ask for at least 1"),
    ({}, ("--option", "dart_pivots=0"), "dart_pivots must be an integer >= 1"),
    (
        {},
        ("--cuda-graphs", "on"),
        "--cuda-graphs on replays CUDA graphs, which need a CUDA device; it runs on cpu",
    ),
]


@pytest.mark.parametrize(("change", "flags", "message"), BAD, ids=[message for _, _, message in BAD])
def test_bad_input_gets_one_line_exit_2_and_writes_nothing(tmp_path, capsys, change, flags, message):
    records = [] if change is None else [{**MIXED[0], **change}]
    data = write_questions(tmp_path / "data", records, images=1)
    out = tmp_path / "out"
    flags = [str(tmp_path) if flag == "EXPORT" else flag for flag in flags]
    argv = ["eval", "--model", "tiny-qwen2-vl", "--data", str(data), "--out", str(out), *flags]
    assert message in one_line_error(argv, capsys)
    assert not out.exists() and leftovers(tmp_path) == []
