"""ONNX Runtime CPU prefill: the uncompressed export vs the LUVC export of a realistic VLM, in one run.

Same models and input as ``prefill_speedup.py`` (``--family``: by default the Qwen2-0.5B-shaped LLM, one 896x896
image = 1024 visual tokens, 64 text tokens; ``qwen3.5``: Qwen3.5-0.8B's hybrid LLM, whose prefill graphs are traced
at the prompt's own length, as a hybrid export's are at one length). Both prefill graphs go through the exporter
(``prefill_spec`` -> ``OnnxFromGraphSpec`` -> lint), the baseline with ``LUVCConfig.off()`` (full budgets, same code
path). Runs alternate between the two sessions so CPU drift cancels; medians are compared with the cost model. Last
line: ``ort_prefill_speedup=<x>``. Usage:
    python benchmarks/ort_prefill_speedup.py [--family qwen3.5] [--repeats 5] [--budgets ...] [--oim-layers ...]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from prefill_speedup import IMAGE_SIDE, TEXT_TOKENS, parse_benchmark_args, prompt_for, realistic_adapter

from luvc import LUVCConfig
from luvc.export.bucket_plan import plan_bucket
from luvc.export.convert import OnnxFromGraphSpec
from luvc.export.exporter import save_model
from luvc.export.graphs import prefill_spec
from luvc.export.lint import check_graph
from luvc.export.profile import ExportProfile
from luvc.export.weights import SharedWeights
from luvc.images import synthetic_image
from luvc.models.spans import scatter_visual_features


def export_prefill(adapter, config: LUVCConfig, folder: Path, name: str) -> tuple[Path, dict]:
    """Export the prefill graph of the 896x896 bucket under ``config``; return its path and example feeds."""
    adapter.apply_luvc(config)
    bucket = plan_bucket(adapter, (IMAGE_SIDE, IMAGE_SIDE))
    inputs = adapter.prepare_inputs([synthetic_image(IMAGE_SIDE, IMAGE_SIDE)], prompt_for(adapter, TEXT_TOKENS))
    # a hybrid LLM's prefill is traced at visuals + max_text_tokens: the prompt's own length, unpadded
    text_after = int(inputs["input_ids"].shape[1]) - bucket.visual_end if adapter.linear_layers else None
    profile = ExportProfile(image_sizes=((IMAGE_SIDE, IMAGE_SIDE),), max_batch=1, max_text_tokens=text_after)
    spec = prefill_spec(adapter, bucket, profile.resolve(adapter))
    model = OnnxFromGraphSpec(spec, profile.resolve(adapter).opset)()
    check_graph(model, spec.name, bucket.tokens_per_image)
    path = folder / f"{name}.onnx"
    save_model(model, path, "always", SharedWeights(folder, f"{name}.onnx.data"))  # a file per graph
    with torch.no_grad():  # the prompt as the prefill receives it: the image's LUVC features in their placeholders
        model = adapter.model.model
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        groups = model.luvc_visual_features(inputs["pixel_values"], dict(inputs), 1)
        placed = scatter_visual_features(inputs["input_ids"], embeds, groups, model.config.image_token_id)
        embeds = placed.inputs_embeds.numpy()
    positions = adapter.prompt_position_ids(inputs, adapter.plan(inputs)).numpy()
    feeds = {
        "inputs_embeds": embeds,
        "position_ids": positions if positions.shape[0] == 3 else positions[0],
        "prompt_lengths": np.array([embeds.shape[1]], dtype=np.int64),  # one row, unpadded
        "visual_shift": np.zeros(1, dtype=np.int64),  # the template's layout (the uncompressed graph takes none)
    }
    return path, {"feeds": feeds, "inputs": inputs, "bucket": bucket}


def open_prefill(path: Path, run: dict) -> None:
    """Open the prefill graph at ``path`` on the CPU EP into ``run`` (``export_prefill``'s), keeping only the feeds the
    graph takes (the uncompressed one takes no ``visual_shift``)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.set_denormal_as_zero", "1")  # as the runtime's sessions
    run["session"] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    taken = {entry.name for entry in run["session"].get_inputs()}
    run["feeds"] = {name: value for name, value in run["feeds"].items() if name in taken}
    run["seconds"] = []


def time_alternating(runs: dict[str, dict], repeats: int) -> None:
    """Run each opened prefill ``repeats`` times after a warm-up round, alternating between them so that CPU drift
    cancels; each run's seconds go to its ``seconds``."""
    for repeat in range(repeats + 1):
        for run in runs.values():
            began = time.perf_counter()
            run["session"].run(["logits"], run["feeds"])
            if repeat:
                run["seconds"].append(time.perf_counter() - began)


def main() -> None:
    args, config = parse_benchmark_args(__doc__)
    if args.video:
        raise SystemExit("--video: this benchmark exports the image prefill; run prefill_speedup.py --video")

    adapter = realistic_adapter(args.family, args.layers)
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, {args.repeats} repeats (median)")
    with tempfile.TemporaryDirectory() as scratch:
        runs = {}
        for name, run_config in (("base", LUVCConfig.off()), ("luvc", config)):
            began = time.perf_counter()
            path, run = export_prefill(adapter, run_config, Path(scratch), name)
            print(f"exported {name} prefill in {time.perf_counter() - began:.0f} s")
            open_prefill(path, run)
            runs[name] = run
        time_alternating(runs, args.repeats)
    base, luvc = (statistics.median(runs[name]["seconds"]) for name in ("base", "luvc"))
    adapter.apply_luvc(config)
    report = adapter.cost(runs["luvc"]["inputs"])
    plan = runs["luvc"]["bucket"].budget_plan
    print(
        f"visual tokens into the LLM: {runs['base']['bucket'].tokens_per_image} uncompressed, "
        f"{plan.num_visual_tokens} after OIM; decoder visual tokens per layer (LUVC): {list(plan.total)}"
    )
    print(f"ORT prefill: {base * 1e3:8.1f} ms -> {luvc * 1e3:8.1f} ms")
    measured = base / luvc
    predicted = report.llm_prefill_speedup
    print(
        f"ort_prefill measured={measured:.2f}x predicted={predicted:.2f}x measured/predicted={measured / predicted:.2f}"
    )
    print(f"ort_prefill_speedup={measured:.2f}")


if __name__ == "__main__":
    main()
