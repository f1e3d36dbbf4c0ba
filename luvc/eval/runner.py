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

from luvc.compress.config import LUVCConfig, ResolvedLUVCConfig
from luvc.compress.cost import CostReport
from luvc.compress.criteria import ranks_in_llm
from luvc.compress.methods import METHODS, Method, method_of
from luvc.errors import critical, warn
from luvc.eval.data import EvalSet, Question
from luvc.eval.points import DEFAULT_MAX_NEW_TOKENS, DEFAULT_RATIOS, PROTOCOLS, BudgetPoint
from luvc.eval.results import Answer, EvalResults, QuestionEntry, Run
from luvc.eval.scoring import score
from luvc.eval.sweep import SweepVariant, sweep_variants
from luvc.export.manifest import ExportManifest
from luvc.loaders import BaseLoader, as_path, loaded_path
from luvc.models import VLMAdapter, load_model
from luvc.models.cache import is_hybrid
from luvc.models.compiled import compiles
from luvc.models.generation import greedy_generate
from luvc.processing import load_processor
from luvc.progress import progress_steps
from luvc.runtime.fit import BucketFitter

EXPORT_POINT = "export"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What one run is: a method, its budget point (``None`` for a method that prunes nothing), the export's own
    config (``fixed``), or a variant of the reconstruction sweep (LUVC with its choices)."""

    method: str
    point: BudgetPoint | None = None
    fixed: LUVCConfig | None = None
    variant: SweepVariant | None = None

    @property
    def name(self) -> str:
        """The run's method as the results name it (a sweep variant's label, e.g. ``luvc[keep=low,oim=2]``)."""
        return self.method if self.variant is None else self.variant.label

    @property
    def point_label(self) -> str:
        return EXPORT_POINT if self.fixed is not None else self.point.label if self.point else ""


def _methods_the_model_runs(adapter: VLMAdapter, methods: list[str], chosen: bool) -> list[str]:
    """``methods`` without those ``adapter``'s language model cannot run: in a hybrid one (Qwen3.5) a method that ranks
    by a decoder layer's attention (FastV, PDrop, ToDRE) finds linear attention before its cuts. Left out of the
    default list with a note; asked for by name (``chosen``), refused with one line."""
    if not is_hybrid(adapter.language_model.config):
        return methods
    attention_ranked = [name for name in methods if name in METHODS and ranks_in_llm(METHODS[name].criterion)]
    if attention_ranked and chosen:
        critical(
            f"{', '.join(attention_ranked)} rank(s) visual tokens by a decoder layer's attention, and this model's "
            "language model is mostly linear attention, which computes none; leave them out of --methods."
        )
    if attention_ranked:
        warn(f"left out {', '.join(attention_ranked)}: they rank by attention, which linear-attention layers lack.")
    return [name for name in methods if name not in attention_ranked]


def run_specs(methods: Sequence[str], points: Sequence[BudgetPoint]) -> list[RunSpec]:
    """One run per method that prunes and budget point, one per method that does not; ``none`` (the reference)
    always, first."""
    names = ["none", *(name for name in dict.fromkeys(methods) if name != "none")]
    specs = []
    for name in names:
        chosen = METHODS[name]
        specs += [RunSpec(name, point) for point in points] if chosen.follows_budgets else [RunSpec(name)]
    return specs


def sweep_specs(axes: Sequence[str], points: Sequence[BudgetPoint]) -> list[RunSpec]:
    """One LUVC run per variant of the sweep over ``axes`` and budget point."""
    return [RunSpec("luvc", point, variant=variant) for variant in sweep_variants(axes) for point in points]


@dataclasses.dataclass
class _Planned:
    """A question's runs as planned: each run's config for this question's image (``None``: a sweep variant whose
    OIM leaves fewer tokens than the point gives, dropped)."""

    question: Question
    configs: list[LUVCConfig | None]


@dataclasses.dataclass
class _Runnable:
    """A question's runs once every run that some question cannot take is dropped (``_drop_unreachable``)."""

    question: Question
    configs: list[LUVCConfig]


@dataclasses.dataclass
class EvalFromModel(BaseLoader[EvalResults]):
    """Loader: ``EvalResults`` of question set ``data`` through ``model`` (a built-in tiny model, a checkpoint folder,
    or a loaded adapter, which the runs patch in place) in PyTorch, once per method of ``methods`` (default: all)
    and, for those that prune, per budget point of ``points`` (default: ratios 0.5, 0.25, 0.125), with ``base`` the
    LUVC knobs they share (OIM layers, SPU variant, rho, schedule, seed). With ``export_dir``, the question set runs
    through the export on ``backend`` (``ort``, or ``trt`` with ``engines_dir``) and, in PyTorch, through the
    uncompressed model and the export's own config (the model defaults to the export's checkpoint; images and clips
    are fitted to its buckets). ``sweep``: axes of the reconstruction sweep (``luvc.eval.sweep``), whose variants run
    at every point beside ``methods`` (default then: none only); ``protocol``: a published benchmark's layout
    (``PROTOCOLS``: its keep ratios as the points, its baseline among the methods); ``cuda_graphs`` (``auto``, ``on``,
    ``off``): the export's graphs replayed as CUDA graphs, and the PyTorch LLM prefill compiled with them (``auto``:
    on a CUDA device)."""

    data: EvalSet
    model: str | VLMAdapter | None = None
    methods: Sequence[str] | None = None
    points: Sequence[BudgetPoint] | None = None
    base: LUVCConfig | None = None
    max_new_tokens: int | None = None
    export_dir: str | Path | BaseLoader[Path] | None = None
    backend: str | None = None
    engines_dir: str | Path | BaseLoader[Path] | None = None
    show_progress: bool | None = None
    fit: str | None = None
    sweep: Sequence[str] | None = None
    protocol: str | None = None
    cuda_graphs: str | None = None

    def __post_init__(self) -> None:
        self.export_dir, self.engines_dir = as_path(self.export_dir), as_path(self.engines_dir)
        self.sweep = tuple(self.sweep or ())

    @property
    def export_path(self) -> Path:
        """The export the questions run through (``export_dir``, once set)."""
        if self.export_dir is None:
            raise ValueError("this eval runs no export")
        return loaded_path(self.export_dir)

    def call_impl(self) -> EvalResults:
        max_new_tokens = DEFAULT_MAX_NEW_TOKENS if self.max_new_tokens is None else self.max_new_tokens
        if max_new_tokens < 1:
            critical(f"--max-new-tokens {max_new_tokens}: generate at least 1 token.")
        adapter, specs, manifest = self._model_and_specs(max_new_tokens)
        if compiles(self.cuda_graphs, next(adapter.model.parameters()).device, many_requests=True):
            adapter.compile_llm(cuda_graphs=True)  # every question's prefill; one compile per config and batch
        fit = _unchanged if manifest is None else self._fitter(manifest)
        base = (self.base or LUVCConfig()).resolve(adapter.vision_depth, adapter.num_layers)
        stages = 2 + (manifest is not None)  # planning, PyTorch, the export
        with progress_steps(self.show_progress, stages * len(self.data.questions), "eval") as advance:
            planned: list[_Planned] = []
            for question in self.data.questions:
                planned.append(_Planned(question, self._configs(adapter, base, specs, fit(question.load_visual()))))
                advance(f"planned {question.id}")
            specs, runnable, dropped = _drop_unreachable(specs, planned)
            runs, costs = _pytorch_runs(adapter, specs, runnable, fit, max_new_tokens, advance)
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
            notes=_notes(specs, manifest) + dropped,
            protocol=self.protocol,
            sweep_axes=list(self.sweep or ()),
        )

    def _model_and_specs(self, max_new_tokens: int) -> tuple[VLMAdapter, list[RunSpec], ExportManifest | None]:
        """The model, the PyTorch runs, and (with an export) the export's manifest."""
        if self.export_dir is None:
            if self.model is None:
                critical("Eval needs a model: pass --model (a built-in tiny model or a checkpoint folder).")
            adapter = self.model if isinstance(self.model, VLMAdapter) else load_model(self.model)
            protocol = PROTOCOLS[self.protocol] if self.protocol else None
            ratios = protocol.ratios if protocol else DEFAULT_RATIOS
            points = list(self.points) if self.points else [BudgetPoint(ratio=r) for r in ratios]
            methods = list(self.methods) if self.methods else ["none"] if self.sweep else list(METHODS)
            methods = _methods_the_model_runs(adapter, methods, chosen=bool(self.methods))
            if protocol and protocol.baseline not in methods:
                methods.append(protocol.baseline)
            if self.sweep:  # the sweep's first variant is LUVC as it ships
                methods = [name for name in methods if name != "luvc"]
            return adapter, run_specs(methods, points) + sweep_specs(self.sweep or (), points), None
        from luvc.export.source import export_source_model

        manifest = ExportManifest.load(self.export_path, verify=True)
        manifest.profile.check_max_new_tokens(max_new_tokens, f"--max-new-tokens {max_new_tokens}")
        if isinstance(self.model, VLMAdapter):
            critical("With an export, pass its checkpoint folder as the model (its config is checked), not an adapter.")
        adapter = export_source_model(manifest, self.model)
        exported = manifest.luvc
        return adapter, [RunSpec("none"), RunSpec(method_of(exported) or EXPORT_POINT, fixed=exported)], manifest

    def _fitter(self, manifest: ExportManifest) -> Callable:
        """Fits each question's image or clip to the export's buckets (``--fit``), for the PyTorch runs as for the
        export's, so both see the same pixels."""
        rules = manifest.image_rules or load_processor(self.export_path)  # as the export's runtime fits them
        fitter = BucketFitter.for_export(manifest, rules, self.fit)
        return lambda visual: fitter(visual)[0]

    def _configs(
        self, adapter: VLMAdapter, base: ResolvedLUVCConfig, specs: Sequence[RunSpec], visual
    ) -> list[LUVCConfig | None]:
        """Each run's config for one question's ``visual``, checked against its visual tokens."""
        pixels = adapter.preprocess([visual])
        visual_tokens = adapter.plan(pixels, LUVCConfig.off()).budget_plan.num_visual_tokens
        configs: list[LUVCConfig | None] = []
        for spec in specs:
            if spec.fixed is not None:
                config = spec.fixed
            else:
                chosen = METHODS[spec.method]
                own = base if spec.variant is None else spec.variant.config(base, adapter.vision_depth)
                budgets = None
                if spec.point is not None:
                    budgets = spec.point.schedule(adapter.num_layers, visual_tokens, base)
                    if spec.variant is not None and not _reachable(adapter, chosen, own, pixels, budgets):
                        configs.append(None)
                        continue
                    _check_reachable(adapter, chosen, own, pixels, budgets, spec.point, visual_tokens)
                config = chosen.config(own, budgets)
            adapter.plan(pixels, config)  # the budgets fit (an error names the fix)
            configs.append(config)
        return configs

    def _export_run(self, counterpart: Run, costs: dict, fit: Callable, max_new_tokens: int, advance) -> Run:
        """The question set through the export's ``Pipeline``; tokens and FLOPs are the cost model's for the export's
        config (``costs``), as for its PyTorch ``counterpart``."""
        from luvc.runtime.pipeline import GenerationOptions, Pipeline

        backend = self.backend or "ort"
        engines = None if self.engines_dir is None else loaded_path(self.engines_dir)
        pipeline = Pipeline(
            self.export_path, backend=backend, engines_dir=engines, fit="exact", cuda_graphs=self.cuda_graphs
        )  # the questions are fitted already
        run = Run(counterpart.method, counterpart.point, backend, dict(counterpart.config))
        questions = self.data.questions
        pipeline.generate(fit(questions[0].load_visual()), questions[0].prompt, GenerationOptions(1))  # warm-up
        options = GenerationOptions(max_new_tokens)
        for question in questions:
            generation = pipeline.generate(fit(question.load_visual()), question.prompt, options)
            text = generation.texts[0]
            run.answers.append(_record(question, text, generation.timings.first_token_ms, costs[question.id]))
            advance(f"{backend}: {question.id}")
        pipeline.release()
        return run


def _pytorch_runs(
    adapter: VLMAdapter,
    specs: Sequence[RunSpec],
    planned: Sequence[_Runnable],
    fit: Callable,
    max_new_tokens: int,
    advance: Callable[[str], None],
) -> tuple[list[Run], dict[str, CostReport]]:
    """Every PyTorch run over the planned questions, a question's runs one after the other, after one untimed warm-up
    of each; and the last run's cost per question (an export's config, which its backend run shares)."""
    runs = [Run(spec.name, spec.point_label, "pytorch", {}) for spec in specs]
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


def _drop_unreachable(
    specs: list[RunSpec], planned: list[_Planned]
) -> tuple[list[RunSpec], list[_Runnable], list[str]]:
    """The runs every question can take (a sweep variant whose OIM leaves fewer tokens than a point gives is dropped
    for every question), and a note naming each dropped run."""
    kept = [index for index in range(len(specs)) if all(plan.configs[index] is not None for plan in planned)]
    notes = [
        f"{specs[index].name} at {specs[index].point_label} was left out of the sweep: its OIM steps leave fewer "
        "visual tokens than the point gives the LLM"
        for index in range(len(specs))
        if index not in kept
    ]
    runnable = [
        _Runnable(plan.question, [config for index in kept if (config := plan.configs[index]) is not None])
        for plan in planned
    ]
    return [specs[index] for index in kept], runnable, notes


def _merged_tokens(adapter: VLMAdapter, chosen: Method, base: LUVCConfig, pixels: dict) -> int:
    return adapter.plan(pixels, chosen.config(base, None)).budget_plan.num_visual_tokens


def _reachable(adapter: VLMAdapter, chosen: Method, base: LUVCConfig, pixels: dict, budgets: tuple[int, ...]) -> bool:
    """Whether a merging method's OIM leaves at least the first budget's visual tokens."""
    return not chosen.merges or budgets[0] <= _merged_tokens(adapter, chosen, base, pixels)


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
    if _reachable(adapter, chosen, base, pixels, budgets):
        return
    merged = _merged_tokens(adapter, chosen, base, pixels)
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
