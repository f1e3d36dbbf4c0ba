"""``EvalFromModel`` on tiny models: the reference is the stock model, methods share budgets, refusals come first,
and an export evaluates as PyTorch does."""

import copy
import json

import pytest
import torch

from luvc.compress.methods import METHODS
from luvc.errors import LuvcError
from luvc.eval.data import load_eval_set
from luvc.eval.points import BudgetPoint
from luvc.eval.runner import EvalFromModel
from luvc.models import TINY_MODELS, load_model
from tests.conftest import stock_inputs
from tests.eval.conftest import MIXED, write_questions

pytestmark = pytest.mark.eval


@pytest.mark.parametrize("family", TINY_MODELS)
def test_none_agrees_with_the_stock_models_own_answers(question_set, family):
    data = load_eval_set(question_set)
    results = EvalFromModel(data, model=family, methods=["none"], max_new_tokens=6, show_progress=False)()
    assert [run.label for run in results.runs] == ["none (pytorch)"]
    adapter = load_model(family)
    stock = copy.deepcopy(adapter.model)  # transformers' own model and generate(), unpatched
    for question, answer in zip(data.questions, results.reference.answers):
        inputs = adapter.prepare_inputs([question.load_visual()], question.prompt)
        with torch.no_grad():
            tokens = stock.generate(**stock_inputs(adapter, inputs), max_new_tokens=6, do_sample=False)
        own = adapter.tokenizer.decode(tokens[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert answer.text == own, question.id
    assert results.summary(results.reference).agreement == 1.0


def test_a_hybrid_model_runs_every_method_but_those_that_rank_by_attention(question_set, capsys):
    """Qwen3.5's language model is mostly linear attention: FastV, PDrop and ToDRE, which rank by a decoder layer's
    attention, are left out of the default list with a warning; every other method runs."""
    data = load_eval_set(question_set, limit=1)
    point = BudgetPoint(ratio=0.5)
    results = EvalFromModel(data, model="tiny-qwen3.5", points=[point], max_new_tokens=2, show_progress=False)()
    assert {run.label.split(" ")[0] for run in results.runs} == set(METHODS) - {"fastv", "pdrop", "todre"}
    assert "left out fastv, pdrop, todre" in capsys.readouterr().err


def test_methods_share_each_points_budgets(question_set):
    data = load_eval_set(question_set, limit=2)
    points = [BudgetPoint(ratio=0.5), BudgetPoint(ratio=0.125)]
    results = EvalFromModel(data, model="tiny-qwen2-vl", points=points, max_new_tokens=2, show_progress=False)()
    pruning = [name for name, method in METHODS.items() if method.follows_budgets]
    assert len(results.runs) == 2 + len(pruning) * len(points)  # none and oim-only once
    for point in points:
        runs = [results.run(name, point.label) for name in pruning]
        for question in range(2):
            per_layer = {tuple(run.answers[question].visual_tokens) for run in runs}
            assert len(per_layer) == 1  # equal per-layer budgets across methods
        assert runs[0].answers[0].visual_tokens[0] == int(point.ratio * 64)  # 64 LLM tokens of a 224x224 image
    oim = results.run("oim-only")
    assert oim.answers[0].visual_tokens == [oim.answers[0].llm_input_tokens] * 4 == [32] * 4
    luvc, spu = results.run("luvc", "ratio 0.5"), results.run("spu-only", "ratio 0.5")
    assert luvc.answers[0].encoder_flops < spu.answers[0].encoder_flops  # OIM makes the encoder cheaper
    assert all(answer.ttft_ms > 0 for run in results.runs for answer in run.answers)


def test_videos_are_evaluated(tmp_path):
    from tests.conftest import write_clip

    folder = write_questions(
        tmp_path, [{"video": "clip.mp4", "question": "Moving?", "answer": "yes", "type": "yes-no", "frames": 4}]
    )
    write_clip(folder / "clip.mp4", frames=12, size=(112, 168))
    results = EvalFromModel(
        load_eval_set(folder),
        model="tiny-qwen2-vl",
        methods=["luvc", "random"],
        points=[BudgetPoint(ratio=0.5)],
        max_new_tokens=2,
        show_progress=False,
    )()
    # 4 frames: 2 temporal slices of 8 x 12 patches, 48 LLM tokens; half of them enter the LLM
    assert results.reference.answers[0].visual_tokens[0] == 48
    assert results.run("random", "ratio 0.5").answers[0].visual_tokens[0] == 24


def test_unreachable_points_are_refused_before_anything_runs(question_set):
    data = load_eval_set(question_set)
    with pytest.raises(
        LuvcError, match=r"luvc at ratio 0.75 would give the LLM 48 visual tokens, but its OIM leaves 32 of the 64"
    ):
        EvalFromModel(data, model="tiny-qwen2-vl", methods=["luvc"], points=[BudgetPoint(ratio=0.75)])()
    with pytest.raises(LuvcError, match="Budget 300 for layer 0 is more than the 64 visual tokens"):
        EvalFromModel(data, model="tiny-qwen2-vl", methods=["random"], points=[BudgetPoint(budgets=(300, 0))])()
    with pytest.raises(LuvcError, match="Eval needs a model"):
        EvalFromModel(data)()


def test_eval_of_the_onnx_runtime_export_equals_pytorch(exports, tmp_path):
    """The export's luvc config in PyTorch, the export on ONNX Runtime and a PyTorch eval of luvc at the export's
    budgets give the same answers; the export's cost is its PyTorch counterpart's."""
    from luvc.export.manifest import ExportManifest

    folder = write_questions(tmp_path, MIXED, size=(224, 224))
    data = load_eval_set(folder)
    export = exports("tiny-qwen2-vl")
    results = EvalFromModel(data, export_dir=export, max_new_tokens=8, show_progress=False)()
    assert [run.label for run in results.runs] == ["none (pytorch)", "luvc @ export (pytorch)", "luvc @ export (ort)"]
    pytorch, ort = results.run("luvc", "export"), results.run("luvc", "export", "ort")
    assert [a.text for a in ort.answers] == [a.text for a in pytorch.answers]
    assert [a.score for a in ort.answers] == [a.score for a in pytorch.answers]
    assert [a.visual_tokens for a in ort.answers] == [a.visual_tokens for a in pytorch.answers]
    budgets = ExportManifest.load(export, verify=False).buckets["224x224"].budgets
    direct = EvalFromModel(
        data,
        model="tiny-qwen2-vl",
        methods=["luvc"],
        points=[BudgetPoint(budgets=tuple(budgets))],
        max_new_tokens=8,
        show_progress=False,
    )()
    assert [a.text for a in direct.run("luvc", BudgetPoint(budgets=tuple(budgets)).label).answers] == [
        a.text for a in ort.answers
    ]


def test_eval_of_an_export_fits_images_of_any_size_to_its_buckets(exports, tmp_path):
    """Questions about images of six sizes: the export answers each as the image resized by hand to its bucket does."""
    from luvc.runtime.pipeline import GenerationOptions, Pipeline
    from tests.conftest import FIT_CASES, fit_case

    (tmp_path / "img").mkdir()
    records, expected_images = [], []
    for index, (size, bucket) in enumerate(FIT_CASES):
        image, by_hand = fit_case(size, bucket, seed=index)
        image.save(tmp_path / "img" / f"{index}.png")
        records.append({"image": f"img/{index}.png", "question": "What?", "answer": "x", "type": "exact"})
        expected_images.append(by_hand)
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    data = load_eval_set(tmp_path)
    export = exports("tiny-qwen2-vl")
    results = EvalFromModel(data, export_dir=export, max_new_tokens=4, show_progress=False)()
    reference = Pipeline(export, fit="exact")
    expected = [
        reference.generate(image, question.prompt, GenerationOptions(4)).texts[0]
        for image, question in zip(expected_images, data.questions)
    ]
    assert [answer.text for answer in results.run("luvc", "export", "ort").answers] == expected
    assert [answer.text for answer in results.run("luvc", "export").answers] == expected  # PyTorch saw the same


def test_video_questions_through_a_video_export(video_exports, tmp_path):
    """A clip of another frame count and size is fitted to the export's video bucket (frames resampled evenly, each
    resized), and the export answers as PyTorch does for its config."""
    from tests.conftest import write_clip

    folder = write_questions(
        tmp_path, [{"video": "clip.mp4", "question": "Moving?", "answer": "yes", "type": "yes-no", "frames": 12}]
    )
    write_clip(folder / "clip.mp4", frames=20, size=(96, 128))
    results = EvalFromModel(
        load_eval_set(folder), export_dir=video_exports("tiny-qwen2-vl"), max_new_tokens=6, show_progress=False
    )()
    pytorch, ort = results.run("luvc", "export"), results.run("luvc", "export", "ort")
    assert ort.answers[0].text == pytorch.answers[0].text
    # 8 frames of 112 x 168: 4 slices of 4 x 6 merge units = 96 tokens; a T merge and a W merge leave 24
    assert results.reference.answers[0].llm_input_tokens == 96 and pytorch.answers[0].llm_input_tokens == 24


def test_eval_of_an_export_ends_each_answer_at_its_length_as_the_loop_does(exports, tmp_path):
    """The length case every front end shares (tests.generation_cases); eval decodes greedily, to the model's
    end-of-sequence ids, so it has no stop strings or penalties to show."""
    from luvc.runtime.pipeline import Pipeline
    from tests import generation_cases as shared

    export = exports("tiny-qwen2-vl")
    reference = shared.Reference.of(Pipeline(export))
    (tmp_path / "img").mkdir()
    shared.image().save(tmp_path / "img" / "case.png")
    record = {"image": "img/case.png", "prompt": shared.PROMPT, "question": "?", "answer": "x", "type": "exact"}
    (tmp_path / "questions.jsonl").write_text(json.dumps(record) + "\n")
    [case] = [case for case in reference.cases() if case.name == "length"]
    results = EvalFromModel(
        load_eval_set(tmp_path), export_dir=export, max_new_tokens=case.max_new_tokens, show_progress=False
    )()
    [answer] = results.run("luvc", "export", "ort").answers
    reference.check(case, shared.Answer(answer.text, "length"))
    assert answer.text == Pipeline(export).generate(shared.image(), shared.PROMPT, case.options()).texts[0]
