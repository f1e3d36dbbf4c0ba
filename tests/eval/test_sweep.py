"""The reconstruction sweep and the benchmark protocol: the grid's variants, the Pareto front, the winners, and a
sweep and a protocol run end to end on a tiny model."""

import json

import pytest

from luvc.compress.config import LUVCConfig
from luvc.errors import LuvcError
from luvc.eval.data import load_eval_set
from luvc.eval.points import BudgetPoint
from luvc.eval.report import write_report
from luvc.eval.runner import EvalFromModel
from luvc.eval.sweep import SweepPoint, pareto_front, parse_sweep, sweep_variants, winners_by_type

pytestmark = pytest.mark.eval


def test_the_grid_covers_every_combination_with_the_default_first():
    variants = sweep_variants(parse_sweep("all"))
    assert len(variants) == 16 and len({v.label for v in variants}) == 16
    assert variants[0].label == "luvc[keep=high,input=residual,lowpass=raster,oim=1]"
    default = variants[0].config(LUVCConfig(), vision_depth=4).resolve(4, 4)
    assert default == LUVCConfig().resolve(4, 4)  # the first variant is LUVC as it ships
    two_steps = sweep_variants(["oim"])[1].config(LUVCConfig(), vision_depth=8).resolve(8, 4)
    assert two_steps.oim_layers == (3, 4) and two_steps.oim_axes() == ("W", "H")
    with pytest.raises(LuvcError, match="is not among"):
        parse_sweep("keep,colour")


def test_the_front_holds_exactly_the_non_dominated_points():
    points = [
        SweepPoint("a", "p", accuracy=0.5, agreement=1.0, gflops=1.0),
        SweepPoint("b", "p", accuracy=0.7, agreement=1.0, gflops=2.0),
        SweepPoint("c", "p", accuracy=0.6, agreement=1.0, gflops=3.0),  # dominated by b
        SweepPoint("d", "p", accuracy=0.5, agreement=1.0, gflops=1.5),  # dominated by a
        SweepPoint("e", "p", accuracy=0.9, agreement=1.0, gflops=4.0),
    ]
    assert [p.variant for p in pareto_front(points)] == ["a", "b", "e"]


def test_winners_break_ties_by_agreement_then_order():
    scores = {"x": {"exact": [0.5, 0.5], "yes-no": [1.0]}, "y": {"exact": [0.5, 0.5], "yes-no": [0.0]}}
    assert winners_by_type(scores, {"x": 0.5, "y": 0.9}) == {"exact": "y", "yes-no": "x"}
    assert winners_by_type(scores, {"x": 0.9, "y": 0.9})["exact"] == "x"


def test_a_sweep_reports_every_variant_its_front_and_winners(question_set, tmp_path):
    results = EvalFromModel(
        load_eval_set(question_set, limit=3),
        model="tiny-qwen2-vl",
        points=[BudgetPoint(ratio=0.5), BudgetPoint(ratio=0.125)],
        max_new_tokens=2,
        show_progress=False,
        sweep=["keep", "oim"],
    )()
    labels = {run.method for run in results.runs}
    assert labels == {"none", *(v.label for v in sweep_variants(["keep", "oim"]))}
    # two OIM steps leave a quarter of the tokens: ratio 0.5 is out of their reach and left out, with a note
    assert {run.point for run in results.runs if run.method.endswith("oim=2]")} == {"ratio 0.125"}
    assert sum("left out of the sweep" in note for note in results.notes) == 2
    low = results.run("luvc[keep=low,oim=1]", "ratio 0.5").config
    two = results.run("luvc[keep=high,oim=2]", "ratio 0.125").config
    assert (low["spu_keep"], len(low["oim_layers"]), two["spu_keep"], len(two["oim_layers"])) == ("low", 1, "high", 2)
    out = write_report(results, tmp_path / "report")
    sweep = json.loads((out / "sweep.json").read_text())
    assert len(sweep["points"]) == 6 and sweep["default"] == "luvc[keep=high,oim=1]"
    for point in sweep["front"]:  # nothing beats a front point on both
        assert not any(
            q["gflops"] <= point["gflops"]
            and q["accuracy"] >= point["accuracy"]
            and q != point
            and (q["gflops"] < point["gflops"] or q["accuracy"] > point["accuracy"])
            for q in sweep["points"]
        )
    assert set(sweep["winners"]) == {"yes-no", "exact"}
    assert (out / "sweep.png").stat().st_size > 0 and "## Reconstruction sweep" in (out / "report.md").read_text()


def test_the_protocol_uses_its_ratios_and_baseline(question_set, tmp_path):
    results = EvalFromModel(
        load_eval_set(question_set, limit=2),
        model="tiny-llava",
        methods=["luvc", "v2drop"],
        max_new_tokens=2,
        show_progress=False,
        protocol="unipruning",
    )()
    points = ["ratio 0.333", "ratio 0.222", "ratio 0.111"]
    assert [run.point for run in results.runs if run.method == "random"] == points  # the baseline joins
    # tiny LLaVA: 256 visual tokens, 85, 56 and 28 enter the LLM (1/3, 2/9, 1/9, rounded down)
    entering = [results.run("v2drop", point).answers[0].visual_tokens[0] for point in points]
    assert entering == [85, 56, 28]
    text = (write_report(results, tmp_path / "report") / "report.md").read_text()
    assert "## Protocol: unipruning" in text and "| random |" in text
