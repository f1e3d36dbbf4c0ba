"""The eval report folder: eval.json (reloadable), report.md with every run, and the Pareto plot."""

from PIL import Image

from luvc.eval.results import EvalResults


def test_report_files(results, tmp_path):
    from luvc.eval.report import write_report

    out = write_report(results, tmp_path / "report")
    assert sorted(path.name for path in out.iterdir()) == ["eval.json", "pareto.png", "report.md"]
    assert EvalResults.load(out / "eval.json") == results
    text = (out / "report.md").read_text()
    assert "| luvc @ ratio 0.5 (pytorch) | 0.667 | 0.333 |" in text
    assert "## Yes/no questions (POPE metrics" in text and "![accuracy vs cost](pareto.png)" in text
    assert "- `luvc`: LUVC: OIM merges in the encoder, SPU prunes in the LLM; exports like LUVC" in text
    with Image.open(out / "pareto.png") as plot:
        assert plot.size[0] > 500
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nothing staged left behind
