"""``ParityFromExport``: run PyTorch LUVC and the exported graphs (and engines) on the same samples and measure
the four parity levels, plus what compression itself costs in PyTorch."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from luvc.errors import LuvcError, critical
from luvc.export.buckets import size_name, size_option
from luvc.export.manifest import ExportManifest
from luvc.export.manifest_entries import STATE_KINDS
from luvc.export.source import same_source
from luvc.loaders import BaseLoader, as_path, functional, loaded_path
from luvc.parity import metrics
from luvc.parity.alignment import aligned_cache_pairs
from luvc.parity.localize import layer_candidates, layer_errors
from luvc.parity.reference import TorchReference, TorchRun
from luvc.parity.results import BackendResult, Check, ParityResults
from luvc.parity.selection import LayerSelection, judge_selection
from luvc.parity.text import first_token_agreement, judge_text
from luvc.parity.tolerances import Tolerances, backend_tolerances, tolerances_for
from luvc.progress import progress_steps
from luvc.runtime.exposed import run_with_outputs
from luvc.runtime.pipeline import host_arrays
from luvc.runtime.weights import MappedWeights
from luvc.samples import Sample, synthetic_samples


class _BackendRun:
    """One backend's outputs for one sample, through one runtime ``Request``; ``expected_ids`` (PyTorch's prompt
    ids) are checked when given. Tensors are host copies."""

    def __init__(self, pipeline, sample: Sample, expected_ids: np.ndarray | None, max_new_tokens: int) -> None:
        prepared = pipeline.prepare([sample.image], [sample.prompt])
        self.pixels, self.bucket, self.input_ids = prepared.pixels, prepared.bucket, prepared.input_ids
        if expected_ids is not None and not np.array_equal(self.input_ids, expected_ids):
            critical(
                f"Sample {sample.name}: the export's prompt template gives other token ids than the model's "
                "(manifest template.text); re-export with this luvc-export version."
            )
        # one vision and prefill run serves the tensor checks, the localisation and the generation
        self.tokens, self.step_logits, request = pipeline.greedy(prepared, max_new_tokens)
        self.image_embeds = pipeline.sessions.to_host(request.image_features["image_embeds"])
        self.prefill_graph, self.prefill_feeds = request.prefill_graph, host_arrays(request.prefill_feeds)
        self.outputs = host_arrays(request.prefill_outputs)


@dataclasses.dataclass
class ParityFromExport(BaseLoader[ParityResults]):
    """Parity of an export folder (ONNX Runtime), optionally its engines (TensorRT) and OpenVINO (``openvino``, its
    products in ``openvino_precision``) against PyTorch LUVC.

    ``samples`` default to the synthetic set (one per bucket size, four in all); ``model`` overrides the
    checkpoint recorded in the manifest; ``tolerances`` default to those of the export's precision. ``baseline_dir``,
    an uncompressed export of the same model (``--no-luvc``), adds what compression costs on ONNX Runtime to what it
    costs in PyTorch.
    """

    export_dir: str | Path | BaseLoader[Path]
    engines_dir: str | Path | BaseLoader[Path] | None = None
    samples: Sequence[Sample] | None = None
    model: str | None = None
    max_new_tokens: int | None = None
    tolerances: Tolerances | None = None
    baseline_dir: str | Path | BaseLoader[Path] | None = None
    show_progress: bool | None = None
    fit: str | None = None
    openvino: bool = False
    openvino_precision: str = "auto"

    def __post_init__(self) -> None:
        self.export_dir, self.engines_dir = as_path(self.export_dir), as_path(self.engines_dir)
        self.baseline_dir = as_path(self.baseline_dir)

    @property
    def export_path(self) -> Path:
        return loaded_path(self.export_dir)

    def _pipelines(self) -> dict:
        """The pipelines checked, by backend name: ONNX Runtime always (it fits the samples and localises), TensorRT
        with ``engines_dir``, OpenVINO with ``openvino``."""
        from luvc.runtime.pipeline import Pipeline

        # an fp16 export runs its float16 arithmetic, as on a GPU (the CPU runtime computes it in float32)
        export = self.export_path
        pipelines = {"ort": Pipeline(export, fit=self.fit, float16_compute=True)}
        if self.engines_dir is not None:
            # plain runs: replayed graphs pad the prompt, and parity compares the prefill's tensors at its length
            engines = loaded_path(self.engines_dir)
            pipelines["trt"] = Pipeline(export, backend="trt", engines_dir=engines, cuda_graphs="off")
        if self.openvino:
            pipelines["openvino"] = Pipeline(
                export, backend="openvino", fit=self.fit, openvino_precision=self.openvino_precision
            )
        return pipelines

    def call_impl(self) -> ParityResults:
        from luvc.runtime.pipeline import Pipeline

        manifest = ExportManifest.load(self.export_path, verify=True)
        tolerances = self.tolerances or tolerances_for(manifest.precision, manifest.float_precision)
        max_new_tokens = 8 if self.max_new_tokens is None else self.max_new_tokens
        manifest.profile.check_max_new_tokens(max_new_tokens, f"--max-new-tokens {max_new_tokens}")
        sizes = [bucket.size for bucket in manifest.buckets.values()]
        samples = list(self.samples) if self.samples is not None else synthetic_samples(sizes)
        if not samples:
            critical("No parity samples; pass a data folder with images or leave out --data.")
        pipelines = self._pipelines()
        # each sample fitted once to a bucket (``--fit``), so that PyTorch and every backend see the same pixels
        fitted = [pipelines["ort"].preparer.fit(sample.image) for sample in samples]
        samples = [dataclasses.replace(sample, image=visual) for sample, (visual, _) in zip(samples, fitted)]
        landed = {manifest.buckets[fit.bucket].size if fit else s.image_size for s, (_, fit) in zip(samples, fitted)}
        for sample in samples:  # what the export cannot take is refused before PyTorch runs for minutes on it
            try:
                pipelines["ort"].prepare([sample.image], [sample.prompt])
            except LuvcError as error:
                critical(f"Sample {sample.name}: {error}")
        baseline_dir = None if self.baseline_dir is None else loaded_path(self.baseline_dir)
        baseline = None if baseline_dir is None else Pipeline(baseline_dir)
        if baseline is not None and baseline_dir is not None:
            check_baseline(manifest, baseline.manifest, baseline_dir, landed)
        reference = TorchReference.from_manifest(manifest, self.model)

        # stage by stage, so that the PyTorch model and the backend sessions are never in memory together: PyTorch
        # (LUVC, then uncompressed) per sample; each backend per sample, its sessions closed before PyTorch runs again
        # on the samples where it kept other tokens and before the localisation opens its own; the ONNX Runtime
        # baseline last
        steps = len(samples) * (1 + len(pipelines)) + 1 + 2 * len(pipelines) + (baseline is not None)
        with progress_steps(self.show_progress, steps, "parity") as advance:
            torch_runs, prompt_ids = [], []
            for sample in samples:
                inputs = reference.adapter.prepare_inputs([sample.image], sample.prompt)
                prompt_ids.append(inputs["input_ids"].numpy())
                torch_runs.append(reference.run(inputs, max_new_tokens))
                advance(f"PyTorch LUVC: {sample.name}")
            compressed = [(run.logits, run.tokens) for run in torch_runs]
            compression = {"pytorch": _compression_cost(compressed, reference.baseline(samples, max_new_tokens))}
            advance(f"PyTorch uncompressed: {len(samples)} samples")
            del reference
            gc.collect()
            backends: list[BackendResult] = []
            backend_runs: dict[str, list[_BackendRun]] = {}
            for name, pipeline in pipelines.items():
                runs = backend_runs[name] = []
                for sample, ids in zip(samples, prompt_ids):
                    runs.append(_BackendRun(pipeline, sample, ids, max_new_tokens))
                    advance(f"{name}: {sample.name}")
                pipeline.release()
                matched = _matched_references(manifest, self.model, samples, torch_runs, runs, max_new_tokens)
                again = sum(m is not t for m, t in zip(matched, torch_runs))
                advance(f"{name}: PyTorch again with its kept tokens for {again} sample(s)")
                compute = _coarser_compute(pipeline)
                bounds = backend_tolerances(tolerances, compute)
                backends.append(_backend_result(name, torch_runs, matched, runs, bounds))
                backends[-1].compute = compute
                if name == "ort":
                    _localise(backends[-1], pipeline, matched[0], runs[0])
                advance(f"{name}: localised layer errors" if name == "ort" else f"{name}: judged")
            if baseline is not None:
                uncompressed = [_BackendRun(baseline, sample, None, max_new_tokens) for sample in samples]
                baseline.release()
                compressed = [(run.outputs["logits"], run.tokens) for run in backend_runs["ort"]]
                compression["ort"] = _compression_cost(
                    compressed, [(run.outputs["logits"], run.tokens) for run in uncompressed]
                )
                advance(f"ort uncompressed ({self.baseline_dir}): {len(samples)} samples")
        return ParityResults(
            export_dir=str(self.export_dir),
            model=manifest.model.id,
            precision=manifest.precision,
            tolerances=tolerances,
            samples=[sample.name for sample in samples],
            backends=backends,
            near_ties=_near_ties(torch_runs, tolerances.tensor_relative),
            compression=compression,
        )


def check_baseline(
    manifest: ExportManifest, baseline: ExportManifest, folder: Path, image_sizes: set[tuple[int, ...]]
) -> None:
    """Refuse a baseline export that is of another model, compressed, or without a bucket for one of the samples'
    ``image_sizes`` (a video's ``(frames, H, W)``)."""
    if not same_source(baseline, manifest):
        critical(
            f"Baseline {folder} was exported from {baseline.model.id!r}, not from this export's model "
            f"({manifest.model.id!r}); export the same checkpoint with --no-luvc."
        )
    if not baseline.luvc.is_off:
        critical(f"Baseline {folder} is LUVC-compressed; export the uncompressed baseline with --no-luvc.")
    buckets = {bucket.size for bucket in baseline.buckets.values()}
    missing = sorted(image_sizes - buckets)
    if missing:
        flags = " ".join(f"{size_option(size)} {size_name(size)}" for size in missing)
        critical(f"Baseline {folder} has no bucket for the image sizes {missing}; re-export it with {flags} --no-luvc.")


check_parity = functional(ParityFromExport, "check_parity")


def _tensor_checks(name: str, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[Check]:
    """Level 1: worst relative error (max abs difference over max abs reference) and cosine of ``(candidate,
    reference)`` pairs over the samples."""
    differences = metrics.max_abs_differences({str(i): pair for i, pair in enumerate(pairs)})
    scales = [float(np.abs(np.asarray(b, dtype=np.float64)).max(initial=0.0)) for _, b in pairs]
    relative = [d / s if s > 0 else (0.0 if d == 0 else np.inf) for d, s in zip(differences.values(), scales)]
    return [
        Check(1, name, "relative_error", float(max(relative))),
        Check(1, name, "cosine", min(metrics.cosine(a, b) for a, b in pairs)),
    ]


def _backend_kept(run: _BackendRun, reference: TorchRun) -> dict[int, np.ndarray]:
    """The backend's kept visual indices at each of the reference's SPU layers that output them."""
    return {
        layer: run.outputs[name] for layer in reference.kept if (name := f"kept_visual_indices.{layer}") in run.outputs
    }


def _matched_references(
    manifest: ExportManifest,
    model: str | None,
    samples: Sequence[Sample],
    torch_runs: list[TorchRun],
    runs: list[_BackendRun],
    max_new_tokens: int,
) -> list[TorchRun]:
    """Per sample, PyTorch's run with the backend's selection: the reference run itself where the backend kept the
    same visual tokens at every SPU layer, else PyTorch run again keeping the backend's (the model loaded again, once,
    only then)."""
    differing = []
    for index, (run, reference) in enumerate(zip(runs, torch_runs)):
        kept = _backend_kept(run, reference)
        if any(not np.array_equal(np.sort(ids, -1), np.sort(reference.kept[layer], -1)) for layer, ids in kept.items()):
            differing.append((index, kept))
    matched = list(torch_runs)
    if differing:
        forced = TorchReference.from_manifest(manifest, model)
        for index, kept in differing:
            inputs = forced.adapter.prepare_inputs([samples[index].image], samples[index].prompt)
            matched[index] = forced.run(inputs, max_new_tokens, kept=kept)
        del forced
        gc.collect()
    return matched


def _backend_result(
    backend: str,
    torch_runs: list[TorchRun],
    matched: list[TorchRun],
    runs: list[_BackendRun],
    tolerances: Tolerances,
) -> BackendResult:
    """Levels 1, 3 and 4 against ``matched`` (PyTorch with the backend's selection), level 2 against ``torch_runs``
    (PyTorch's own selection)."""
    result = BackendResult(backend)
    pairs = list(zip(runs, matched))
    result.checks += _tensor_checks("vision.image_embeds", [(r.image_embeds, t.image_embeds) for r, t in pairs])
    result.checks += _tensor_checks("prefill.logits", [(r.outputs["logits"], t.logits) for r, t in pairs])
    for kind in ("key", "value"):  # the rows of the tokens both runs hold (all of them, once the selection matches)
        aligned: list[tuple[np.ndarray, np.ndarray]] = []
        left_out, after = 0, 0
        for r, t in pairs:
            kept = {layer: r.outputs.get(f"kept_visual_indices.{layer}", ids) for layer, ids in t.kept.items()}
            found = aligned_cache_pairs(r.outputs, t.presents, kind, kept, t.kept, r.bucket.visual_spans)
            aligned, left_out, after = aligned + found[0], left_out + found[1], after + found[2]
        leaving = [f"the rows of {left_out} swapped token{'s' if left_out > 1 else ''}"] if left_out else []
        leaving += [f"{after} layer{'s' if after > 1 else ''} after a swap"] if after else []
        swapped = f" (without {' and '.join(leaving)})" if leaving else ""
        result.checks += _tensor_checks(f"prefill.present.*.{kind}{swapped}", aligned)
    for kind in STATE_KINDS:  # a hybrid model's linear-attention states: each row's at its last token
        states = [(r.outputs[n], t.presents[n]) for r, t in pairs for n in t.presents if n.endswith(f".{kind}")]
        if states:
            result.checks += _tensor_checks(f"prefill.present.*.{kind}", states)
    decode = []  # steps after the first whose prefixes still agree (step 0 is the prefill's logits)
    for r, t in pairs:
        agree = metrics.agreeing_steps(r.tokens, t.tokens)
        decode += [(r.step_logits[:, step], t.step_logits[:, step]) for step in range(1, agree)]
    if decode:
        result.checks += _tensor_checks("decode.logits", decode)
    # level 2: selection, a swap at a near tie (within the measured noise, at most what the precision allows) and what
    # follows it not counted as error
    noise = min(_worst(result.checks, "prefill.present", "relative_error"), tolerances.tensor_relative)
    selections: dict[int, LayerSelection] = {}
    for r, t in zip(runs, torch_runs):
        judge_selection(_backend_kept(r, t), t.kept, t.scores, noise, selections)
    for layer, selection in sorted(selections.items()):
        result.kept_overlap[layer] = selection.jaccard
        result.selections[layer] = selection
        result.checks.append(Check(2, f"kept_visual_indices.{layer}", "kept_jaccard", selection.judged))
    embed_cosine = min(float(metrics.row_cosines(r.image_embeds, t.image_embeds).min()) for r, t in pairs)
    result.checks.append(Check(2, "OIM-merged image embeddings (per token)", "embed_cosine", embed_cosine))
    # levels 3 and 4: a first token or a first differing pick of the text at a near tie (within twice the logits'
    # measured noise, at most what the precision allows) is no error, nor what follows it in the text
    measured = max(_worst(result.checks, graph, "relative_error") for graph in ("prefill.logits", "decode.logits"))
    logits_noise = min(measured, tolerances.tensor_relative)
    firsts = [first_token_agreement(r.outputs["logits"], t.logits, logits_noise) for r, t in pairs]
    top1, raw = (float(np.mean([first[k] for first in firsts])) for k in (0, 1))
    ties = sum(first[2] for first in firsts)
    kl = max(float(metrics.kl_divergence(r.outputs["logits"], t.logits).max()) for r, t in pairs)
    at_ties = f" (raw {raw:.4g}; {ties} at near ties)" if ties else ""
    result.checks += [
        Check(3, f"first-token top-1 agreement{at_ties}", "top1_agreement", top1),
        Check(3, "first-token KL divergence from PyTorch", "kl_divergence", kl),
    ]
    result.text = judge_text([(r.tokens, t.tokens, t.step_logits) for r, t in pairs], logits_noise)
    result.checks += [
        Check(4, "generated text exact match", "exact_match", result.text.judged_exact),
        Check(4, "generated token agreement", "token_agreement", result.text.judged_tokens),
    ]
    return result


def _coarser_compute(pipeline) -> str:
    """``bf16`` for an OpenVINO pipeline whose products compute in bf16; else ``""`` (as the export's precision)."""
    openvino = pipeline.sessions.openvino
    return "bf16" if openvino is not None and openvino.precision.precision == "bf16" else ""


def _worst(checks: list[Check], prefix: str, metric: str) -> float:
    """The largest value of ``metric`` among the checks whose name starts with ``prefix`` (0 when none)."""
    values = [check.value for check in checks if check.name.startswith(prefix) and check.metric == metric]
    return max(values, default=0.0)


def _localise(result: BackendResult, pipeline, torch_run: TorchRun, run: _BackendRun) -> None:
    """Per-layer errors of the first sample's vision and prefill graphs on ONNX Runtime."""
    references = torch_run.layer_outputs
    graphs = [
        (run.bucket.vision, host_arrays(pipeline.feeds.vision_feeds(run.pixels[0], run.bucket)[0]), "vision."),
        (run.prefill_graph, run.prefill_feeds, "llm."),
    ]
    import onnx

    precision = pipeline.manifest.precision
    used = pipeline.sessions.weights  # the localisation's sessions get the weights as the pipeline's did
    weights = MappedWeights(pipeline.folder, used.compute, digests=used.digests)
    # a linear-attention layer's own output holds each row turned, its padding first (luvc.models.padded_rows): its
    # next layer's input is compared instead
    turned = {f"llm.layers.{layer}" for layer in pipeline.manifest.geometry.linear_layers}
    for graph_name, feeds, family in graphs:
        path = pipeline.folder / pipeline.manifest.graphs[graph_name].file
        layers = [name for name in references if name.startswith(family) and name not in turned]
        candidates = layer_candidates(onnx.load(str(path), load_external_data=False), layers)
        names = [name for found in candidates.values() for name in found]
        values = run_with_outputs(path, names, feeds, basic_optimizations=precision == "fp8", weights=weights)
        result.layer_errors += layer_errors({k: references[k] for k in layers}, candidates, values)
    weights.close()
    result.localised = True


def _near_ties(torch_runs: list[TorchRun], margin: float) -> dict[int, float]:
    """Mean share of near-tie tokens around each SPU layer's cut, over samples and images."""
    shares: dict[int, list[float]] = {}
    for run in torch_runs:
        for layer, spans in run.scores.items():
            cuts = [(s, budget) for s, budget, _ in spans if 0 < budget < s.shape[-1]]  # a zero budget has no cut
            if cuts:
                shares.setdefault(layer, []).extend(metrics.near_tie_share(s, budget, margin) for s, budget in cuts)
    return {layer: float(np.mean(values)) for layer, values in sorted(shares.items())}


def _compression_cost(
    compressed: list[tuple[np.ndarray, np.ndarray]], uncompressed: list[tuple[np.ndarray, np.ndarray]]
) -> dict[str, float]:
    """LUVC against the uncompressed model on one backend, from ``(first-token logits, greedy tokens)`` per sample:
    first-token and generated-text agreement."""
    top1, kl, exact, agreement = [], [], [], []
    for (logits, tokens), (base_logits, base_tokens) in zip(compressed, uncompressed):
        top1.append((logits.argmax(-1) == base_logits.argmax(-1)).mean())
        kl.append(metrics.kl_divergence(logits, base_logits).mean())
        exact.append(np.array_equal(tokens, base_tokens))
        agreement.append(metrics.token_agreement(tokens, base_tokens))
    return {
        "top1_agreement": float(np.mean(top1)),
        "kl_divergence": float(np.mean(kl)),
        "exact_match": float(np.mean(exact)),
        "token_agreement": float(np.mean(agreement)),
    }
