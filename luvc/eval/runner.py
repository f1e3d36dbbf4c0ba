"""``EvalFromModel``: run a question set through a model once per method and budget point, and optionally through an
export on ONNX Runtime or TensorRT, and collect what each answered and cost.

Every question is planned before anything runs (its media loads, and every method's budgets fit its visual tokens),
so bad data or a budget a method cannot meet stops the run at once. PyTorch runs then go question by question, every
run of a question one after the other (a change of load on the machine touches every method alike), each after one
untimed warm-up on the first question. With an export, its runs follow once the PyTorch model is released.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from luvc.compress.config import LUVCConfig
from luvc.compress.cost import CostReport
from luvc.compress.methods import METHODS, Method, method_of
from luvc.errors import critical
from luvc.eval.data import EvalSet, Question
from luvc.eval.points import DEFAULT_MAX_NEW_TOKENS, DEFAULT_RATIOS, BudgetPoint
from luvc.eval.results import Answer, EvalResults, QuestionEntry, Run
from luvc.eval.scoring import score
from luvc.export.manifest import ExportManifest
from luvc.models import VLMAdapter, load_model
from luvc.models.generation import greedy_generate
from luvc.progress import progress_steps
from luvc.samples import fit_image
from luvc.videos import Video

EXPORT_POINT = "export"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What one run is: a method, its budget point (``None`` for a method that prunes nothing), or the export's own
    config (``fixed``)."""

    method: str
    point: BudgetPoint | None = None
    fixed: LUVCConfig | None = None

    @property
    def point_label(self) -> str:
        return EXPORT_POINT if self.fixed is not None else self.point.label if self.point else ""


def run_specs(methods: Sequence[str], points: Sequence[BudgetPoint]) -> list[RunSpec]:
    """One run per method that prunes and budget point, one per method that does not; ``none`` (the reference)
    always, first."""
    names = ["none", *(name for name in dict.fromkeys(methods) if name != "none")]
    specs = []
    for name in names:
        chosen = METHODS[name]
        specs += [RunSpec(name, point) for point in points] if chosen.follows_budgets else [RunSpec(name)]
    return specs


@dataclasses.dataclass
class _Planned:
    """A question's runs as planned: each run's config for this question's image."""

    question: Question
    configs: list[LUVCConfig]


class EvalFromModel:
    """Loader: ``EvalResults`` of question set ``data`` through ``model`` (a built-in tiny model, a checkpoint folder,
    or a loaded adapter, which the runs patch in place) in PyTorch, once per method of ``methods`` (default: all)
    and, for those that prune, per budget point of ``points`` (default: ratios 0.5, 0.25, 0.125), with ``base`` the
    LUVC knobs they share (OIM layers, SPU variant, rho, schedule, seed). With ``export_dir``, the question set runs
    through the export on ``backend`` (``ort``, or ``trt`` with ``engines_dir``) and, in PyTorch, through the
    uncompressed model and the export's own config (the model defaults to the export's checkpoint; images and clips
    are fitted to its buckets)."""

    def __init__(
        self,
        data: EvalSet,
        model: str | VLMAdapter | None = None,
        methods: Sequence[str] | None = None,
        points: Sequence[BudgetPoint] | None = None,
        base: LUVCConfig | None = None,
        max_new_tokens: int | None = None,
        export_dir: str | Path | None = None,
        backend: str | None = None,
        engines_dir: str | Path | None = None,
        show_progress: bool | None = None,
    ) -> None:
        self.data = data
        self.model = model
        self.methods = methods
        self.points = points
        self.base = base
        self.max_new_tokens = max_new_tokens
        self.export_dir = None if export_dir is None else Path(export_dir)
        self.backend = backend
        self.engines_dir = engines_dir
        self.show_progress = show_progress

    def __call__(self) -> EvalResults:
        return self.call_impl()

    def call_impl(self) -> EvalResults:
        max_new_tokens = DEFAULT_MAX_NEW_TOKENS if self.max_new_tokens is None else self.max_new_tokens
        if max_new_tokens < 1:
            critical(f"--max-new-tokens {max_new_tokens}: generate at least 1 token.")
        adapter, specs, manifest = self._model_and_specs(max_new_tokens)
        fit = _unchanged if manifest is None else _bucket_fitter([b.size for b in manifest.buckets.values()])
        base = (self.base or LUVCConfig()).resolve(adapter.vision_depth, adapter.num_layers)
        stages = 2 + (manifest is not None)  # planning, PyTorch, the export
        with progress_steps(self.show_progress, stages * len(self.data.questions), "eval") as advance:
            planned = []
            for question in self.data.questions:
                planned.append(_Planned(question, self._configs(adapter, base, specs, fit(question.load_visual()))))
                advance(f"planned {question.id}")
            runs, costs = _pytorch_runs(adapter, specs, planned, fit, max_new_tokens, advance)
            name = adapter.name
            if manifest is not None:  # the PyTorch model goes before the export's sessions come
                del adapter
                gc.collect()
                runs.append(self._export_run(runs[-1], costs, fit, max_new_tokens, advance))
        return EvalResults(
            model=name,
            data=str(self.data.source),
            questions=[QuestionEntry(q.id, q.type, list(q.answers)) for q in self.data.questions],
            runs=runs,
            max_new_tokens=max_new_tokens,
            export_dir=None if self.export_dir is None else str(self.export_dir),
            notes=_notes(specs, manifest),
        )

    def _model_and_specs(self, max_new_tokens: int) -> tuple[VLMAdapter, list[RunSpec], ExportManifest | None]:
        """The model, the PyTorch runs, and (with an export) the export's manifest."""
        if self.export_dir is None:
            if self.model is None:
                critical("Eval needs a model: pass --model (a built-in tiny model or a checkpoint folder).")
            adapter = self.model if isinstance(self.model, VLMAdapter) else load_model(self.model)
            points = list(self.points) if self.points else [BudgetPoint(ratio=r) for r in DEFAULT_RATIOS]
            return adapter, run_specs(list(self.methods) if self.methods else list(METHODS), points), None
        from luvc.export.exporter import export_source_model

        manifest = ExportManifest.load(self.export_dir, verify=True)
        manifest.profile.check_max_new_tokens(max_new_tokens, f"--max-new-tokens {max_new_tokens}")
        if isinstance(self.model, VLMAdapter):
            critical("With an export, pass its checkpoint folder as the model (its config is checked), not an adapter.")
        adapter = export_source_model(manifest, self.model)
        exported = LUVCConfig.from_dict(manifest.luvc)
        return adapter, [RunSpec("none"), RunSpec(method_of(exported) or EXPORT_POINT, fixed=exported)], manifest

    def _configs(self, adapter: VLMAdapter, base: LUVCConfig, specs: Sequence[RunSpec], visual) -> list[LUVCConfig]:
        """Each run's config for one question's ``visual``, checked against its visual tokens."""
        pixels = adapter.preprocess([visual])
        visual_tokens = adapter.plan(pixels, LUVCConfig.off()).budget_plan.num_visual_tokens
        configs = []
        for spec in specs:
            if spec.fixed is not None:
                config = spec.fixed
            else:
                chosen = METHODS[spec.method]
                budgets = None
                if spec.point is not None:
                    budgets = spec.point.schedule(adapter.num_layers, visual_tokens, base)
                    _check_reachable(adapter, chosen, base, pixels, budgets, spec.point, visual_tokens)
                config = chosen.config(base, budgets)
            adapter.plan(pixels, config)  # the budgets fit (an error names the fix)
            configs.append(config)
        return configs

    def _export_run(self, counterpart: Run, costs: dict, fit: Callable, max_new_tokens: int, advance) -> Run:
        """The question set through the export's ``Pipeline``; tokens and FLOPs are the cost model's for the export's
        config (``costs``), as for its PyTorch ``counterpart``."""
        from luvc.runtime.pipeline import Pipeline

        backend = self.backend or "ort"
        pipeline = Pipeline(self.export_dir, backend=backend, engines_dir=self.engines_dir)
        run = Run(counterpart.method, counterpart.point, backend, dict(counterpart.config))
        questions = self.data.questions
        pipeline.generate(fit(questions[0].load_visual()), questions[0].prompt, max_new_tokens=1)  # warm-up
        for question in questions:
            generation = pipeline.generate(fit(question.load_visual()), question.prompt, max_new_tokens)
            text = generation.texts[0]
            run.answers.append(_record(question, text, generation.timings.first_token_ms, costs[question.id]))
            advance(f"{backend}: {question.id}")
        pipeline.release()
        return run


def _pytorch_runs(
    adapter: VLMAdapter,
    specs: Sequence[RunSpec],
    planned: Sequence[_Planned],
    fit: Callable,
    max_new_tokens: int,
    advance: Callable[[str], None],
) -> tuple[list[Run], dict[str, CostReport]]:
    """Every PyTorch run over the planned questions, a question's runs one after the other, after one untimed warm-up
    of each; and the last run's cost per question (an export's config, which its backend run shares)."""
    runs = [Run(spec.method, spec.point_label, "pytorch", {}) for spec in specs]
    for run, config in zip(runs, planned[0].configs):
        run.config = {key: value for key, value in config.to_dict().items() if key != "budgets"}
    costs = {}
    for index, plan in enumerate(planned):
        visual = fit(plan.question.load_visual())
        if index == 0:  # one untimed warm-up of each run
            for config in plan.configs:
                _answer(adapter, config, plan.question, visual, 1)
        for run, config in zip(runs, plan.configs):
            answer, costs[plan.question.id] = _answer(adapter, config, plan.question, visual, max_new_tokens)
            run.answers.append(answer)
        advance(f"pytorch: {plan.question.id} ({len(runs)} runs)")
    return runs, costs


def _notes(specs: Sequence[RunSpec], manifest: ExportManifest | None) -> list[str]:
    """What a reader of the report needs to know about how it was measured."""
    notes = [
        "TTFT: median wall time from the pixels to the first token (vision encoder, prefill, first token; "
        "preprocessing excluded); PyTorch runs on the CPU in float32",
    ]
    if manifest is not None:
        notes.append(f"images and clips were fitted to the export's buckets ({', '.join(manifest.buckets)})")
    if any(spec.method == "fastv" for spec in specs):
        notes.append(
            "fastv's TTFT includes its ranking: the last prompt token's attention probabilities in one decoder "
            "layer (with a cut before layer 0, an extra attention pass of layer 0 over the whole prompt)"
        )
    return notes


def _check_reachable(
    adapter: VLMAdapter,
    chosen: Method,
    base: LUVCConfig,
    pixels: dict,
    budgets: tuple[int, ...],
    point: BudgetPoint,
    visual_tokens: int,
) -> None:
    """Refuse a point that gives the LLM more visual tokens than a merging method leaves after OIM."""
    if not chosen.merges:
        return
    merged = adapter.plan(pixels, chosen.config(base, None)).budget_plan.num_visual_tokens
    if budgets[0] > merged:
        critical(
            f"{chosen.name} at {point.label} would give the LLM {budgets[0]} visual tokens, but its OIM leaves "
            f"{merged} of the {visual_tokens}; use a lower ratio or budget for it (at most "
            f"{merged / visual_tokens:.3g}), fewer --oim-layers, or leave {chosen.name} out of --methods."
        )


def _answer(
    adapter: VLMAdapter, config: LUVCConfig, question: Question, visual, max_new_tokens: int
) -> tuple[Answer, CostReport]:
    """One run's answer to ``question`` in PyTorch, and the request's cost."""
    adapter.apply_luvc(config)
    inputs = adapter.prepare_inputs([visual], question.prompt)
    times: list[float] = []
    began = time.perf_counter()
    tokens = greedy_generate(
        adapter.model, inputs, max_new_tokens, eos_token_id=adapter.stop_token_ids or None, step_times=times
    )
    ttft_ms = (times[0] - began) * 1e3
    text = adapter.tokenizer.decode(tokens[0], skip_special_tokens=True)
    cost = adapter.cost(inputs)
    return _record(question, text, ttft_ms, cost), cost


def _record(question: Question, text: str, ttft_ms: float, cost: CostReport) -> Answer:
    """``text`` scored against ``question``, with its time to first token and the request's cost."""
    graded = score(question, text)
    return Answer(
        question=question.id,
        text=text,
        read=graded.read,
        score=graded.value,
        ttft_ms=ttft_ms,
        visual_tokens=[tokens - cost.text_tokens for tokens in cost.decoder_tokens],
        llm_input_tokens=cost.llm_visual_tokens,
        encoder_flops=cost.encoder_flops,
        llm_flops=cost.llm_prefill_flops,
        selection_flops=cost.selection_flops,
        kv_cache_bytes=cost.kv_cache_bytes,
    )


def _unchanged(visual):
    return visual


def _bucket_fitter(sizes: Sequence[tuple]) -> Callable:
    """A function that fits an image to the image bucket closest to its aspect ratio, and a clip to the closest video
    bucket (``_fit_video``)."""
    images = [size for size in sizes if len(size) == 2 and isinstance(size[0], int)]
    videos = [size for size in sizes if len(size) == 3]

    def fit(visual):
        if isinstance(visual, Video):
            return _fit_video(visual, videos)
        if not images:
            critical(f"This export has no image bucket (buckets: {sizes}); its questions must be videos.")
        return fit_image(visual, images)

    return fit


def _fit_video(video: Video, buckets: Sequence[tuple[int, int, int]]) -> Video:
    """``video`` with its frames resampled evenly to the closest video bucket's count and resized to its size."""
    if not buckets:
        critical("This export has no video bucket; export with --video-size FxHxW to evaluate video questions.")
    frames, height, width = min(
        buckets, key=lambda b: (abs(b[2] / b[1] - video.size[1] / video.size[0]), abs(b[0] - len(video.frames)))
    )
    if len(video.frames) < frames:
        critical(
            f"A clip of {len(video.frames)} sampled frames cannot fill the export's {frames}-frame bucket; sample "
            f"more frames ('frames' or 'fps' in the question) or export a shorter --video-size."
        )
    picks = [round(i * (len(video.frames) - 1) / max(frames - 1, 1)) for i in range(frames)]
    resized = tuple(
        video.frames[i].resize((width, height), Image.Resampling.BICUBIC)
        if video.frames[i].size != (width, height)
        else video.frames[i]
        for i in picks
    )
    return dataclasses.replace(video, frames=resized, frame_indices=tuple(video.frame_indices[i] for i in picks))
