"""PyTorch LUVC as the parity reference: outputs, per-layer activations and SPU scores of one sample at a time.

The reference runs the patched ``transformers`` model in fp32 with the export's LUVC config, on the same
preprocessed pixels and prompt ids as the backend, so any difference is what the export costs. Where the backend kept
other visual tokens than PyTorch (at a near tie), ``run(..., kept=...)`` runs PyTorch with the backend's selection, so
that the tensors and text compare the same tokens and the selection is judged on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from luvc.compress.config import LUVCConfig
from luvc.export.manifest import ExportManifest
from luvc.export.naming import layer_name
from luvc.models import VLMAdapter
from luvc.models.compat import output_cache
from luvc.models.generation import greedy_generate
from luvc.models.spans import original_ids
from luvc.samples import Sample


@dataclasses.dataclass
class TorchRun:
    """PyTorch outputs for one sample (parity runs a batch of one; B rows for a batch of same-size images)."""

    image_embeds: np.ndarray  # (B, n, D) after OIM and the projector
    logits: np.ndarray  # (B, V) first token
    presents: dict[str, np.ndarray]  # present.{l}.key / .value
    kept: dict[int, np.ndarray]  # SPU layer -> (B, k) kept visual indices
    # SPU layer -> [(scores (B, n), budget, the scored tokens' original visual indices (B, n))] per image span
    scores: dict[int, list[tuple[np.ndarray, int, np.ndarray]]]
    layer_outputs: dict[str, np.ndarray]  # vision.blocks.{i} / llm.layers.{i} -> output activation
    tokens: np.ndarray  # (B, T) greedy
    step_logits: np.ndarray  # (B, T, V)


def _first_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class TorchReference:
    """Runs PyTorch LUVC (and, for the compression question, the same model with LUVC off)."""

    def __init__(self, adapter: VLMAdapter, config: LUVCConfig) -> None:
        self.adapter = adapter
        self.config = config
        adapter.apply_luvc(config)

    @classmethod
    def from_manifest(cls, manifest: ExportManifest, model: str | None = None) -> TorchReference:
        """Load the model an export came from (``model``: a checkpoint folder, when it has moved since)."""
        from luvc.export.source import export_source_model

        return cls(export_source_model(manifest, model), manifest.luvc)

    def _hooks(self, activations: dict, scores: dict) -> list:
        def keep(name):
            return lambda module, args, output: activations.__setitem__(name, _first_tensor(output).detach().numpy())

        def score(layer):
            def hook(module, args):
                hidden, _, _, visual_ids, spans, budgets, scorer, *rest = args
                scored = rest[0] if rest and rest[0] is not None else hidden  # what the criterion reads
                if visual_ids is None:  # the first cut: every visual token, in order
                    visual_ids = original_ids(hidden.shape[0], sum(count for _, count in spans), hidden.device)
                offsets = [sum(count for _, count in spans[:index]) for index in range(len(spans))]
                scores[layer] = [
                    (
                        scorer(scored[:, start : start + count], visual_ids[:, offset : offset + count], span).numpy(),
                        budget,
                        visual_ids[:, offset : offset + count].numpy(),
                    )
                    for span, ((start, count), budget, offset) in enumerate(zip(spans, budgets, offsets))
                ]

            return hook

        def keep_input(name):
            def hook(module, args):
                activations[name] = _first_tensor(args).detach().numpy()

            return hook

        hooks = []
        for i, block in enumerate(self.adapter.vision_blocks):
            merge = getattr(block, "luvc_oim", None) if getattr(block, "luvc_step", None) is not None else None
            if isinstance(merge, torch.nn.Module):  # a block that merges in its own forward (CLIP, SigLIP): its
                # output before the merge, as the graph's block scope ends before its LUVC unit
                hooks.append(merge.register_forward_pre_hook(keep_input(layer_name("vision", i))))
            else:
                hooks.append(block.register_forward_hook(keep(layer_name("vision", i))))
        hooks += [
            layer.register_forward_hook(keep(layer_name("llm", i)))
            for i, layer in enumerate(self.adapter.decoder_layers)
        ]
        spu = getattr(self.adapter.language_model, "luvc_spu", None) or []
        hooks += [unit.register_forward_pre_hook(score(i)) for i, unit in enumerate(spu)]
        return hooks

    def _forcing_hooks(self, kept: Mapping[int, np.ndarray]) -> list:
        """Hooks that make each SPU layer in ``kept`` keep those original visual indices (``(B, k)``, every span's
        kept tokens), whatever the scores: the scorer is replaced by one that scores them 1 and the rest 0."""

        def force(ids: torch.Tensor):
            def hook(module, args):
                hidden, cos, sin, visual_ids, spans, budgets, _, *rest = args

                def members(rows, span_ids, span):
                    return (span_ids[..., None] == ids[:, None, :]).any(-1).to(rows.dtype)

                return (hidden, cos, sin, visual_ids, spans, budgets, members, *rest)

            return hook

        spu = getattr(self.adapter.language_model, "luvc_spu", None) or []
        return [
            unit.register_forward_pre_hook(force(torch.as_tensor(np.asarray(kept[layer]))))
            for layer, unit in enumerate(spu)
            if layer in kept
        ]

    @torch.no_grad()
    def run(self, inputs: dict, max_new_tokens: int, kept: Mapping[int, np.ndarray] | None = None) -> TorchRun:
        """Outputs for model ``inputs`` (``adapter.prepare_inputs``; one sample, or a batch); ``kept``: SPU layer ->
        ``(B, k)`` original visual indices to keep there instead of the best-scoring ones (a backend's selection)."""
        activations: dict[str, np.ndarray] = {}
        scores: dict[int, list[tuple[np.ndarray, int, np.ndarray]]] = {}
        forcing = self._forcing_hooks(kept or {})  # first, so that the recorded scores are those that selected
        hooks = self._hooks(activations, scores)
        try:
            outputs = self.adapter.model.model(**inputs, use_cache=True)
        finally:
            for hook in hooks:
                hook.remove()
        try:
            logits = self.adapter.model.lm_head(outputs.last_hidden_state[:, -1])
            tokens, step_logits = greedy_generate(self.adapter.model, inputs, max_new_tokens, return_logits=True)
        finally:
            for hook in forcing:
                hook.remove()
        embeds = outputs.image_hidden_states
        presents = {}
        for layer, cached in enumerate(output_cache(outputs).layers):
            states = getattr(cached, "conv_states", None)  # a linear-attention layer's (transformers' state index 0)
            if states is not None:
                presents[f"present.{layer}.conv"] = states[0].numpy()
                presents[f"present.{layer}.recurrent"] = cached.recurrent_states[0].numpy()
            else:
                presents[f"present.{layer}.key"] = cached.keys.numpy()
                presents[f"present.{layer}.value"] = cached.values.numpy()
        return TorchRun(
            image_embeds=embeds.reshape(inputs["input_ids"].shape[0], -1, embeds.shape[-1]).numpy(),
            logits=logits.numpy(),
            presents=presents,
            kept={layer: kept.numpy() for layer, kept in outputs.kept_visual_indices.items()},
            scores=scores,
            layer_outputs=activations,
            tokens=tokens.numpy(),
            step_logits=step_logits.numpy(),
        )

    @torch.no_grad()
    def baseline(self, samples: Sequence[Sample], max_new_tokens: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(first-token logits (1, V), greedy tokens (1, T))`` per sample with LUVC off (the uncompressed model)."""
        self.adapter.apply_luvc(LUVCConfig.off())
        try:
            runs = []
            for sample in samples:
                inputs = self.adapter.prepare_inputs([sample.image], sample.prompt)
                tokens, logits = greedy_generate(self.adapter.model, inputs, max_new_tokens, return_logits=True)
                runs.append((logits[:, 0].numpy(), tokens.numpy()))
            return runs
        finally:
            self.adapter.apply_luvc(self.config)
