"""The eval report folder: eval.json (reloadable), report.md with every run, and the Pareto plot."""

from PIL import Image

from luvc.eval.results import EvalResults


def test_report_files(results, tmp_path):
    from luvc.eval.report import write_report

    out = write_report(results, tmp_path / "report")
    written = ["eval.json", "pareto.png", "report.md"]
    assert sorted(path.name for path in out.iterdir()) == [".luvc-files", *written]
    assert sorted((out / ".luvc-files").read_text().split()) == written  # what --overwrite may replace
    assert EvalResults.load(out / "eval.json") == results
    text = (out / "report.md").read_text()
    assert "| luvc @ ratio 0.5 (pytorch) | 0.667 | 0.333 |" in text
    assert "## Yes/no questions (POPE metrics" in text and "![accuracy vs cost](pareto.png)" in text
    assert "- `luvc`: LUVC: OIM merges in the encoder, SPU prunes in the LLM; exports like LUVC" in text
    with Image.open(out / "pareto.png") as plot:
        assert plot.size[0] > 500
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nothing staged left behind
