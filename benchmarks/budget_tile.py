"""What tile-aligned budgets (``--option budget_tile=N``) cost and buy, against the unrounded schedule, in one run.

Rounding each layer's budget to a multiple of a GPU tile makes budgets change, and SPU cut, only when a tile's worth
of tokens goes: fewer cuts, so fewer nodes for a GPU to launch at batch 1 (issue 50), at the price of tokens gone a
layer or two early or kept a little longer. On the benchmark model of ``ort_prefill_speedup.py`` (Qwen2-0.5B-shaped
LLM, 24 layers, one 896x896 image: 1024 visual tokens, 512 after OIM, 64 text tokens), for each tile it prints:
- ``cuts``: SPU cuts in the prefill; ``token_layers``: visual tokens summed over layers, against tile 1;
- ``nodes``: nodes of the prefill graph after ONNX Runtime's optimisation (CPU EP), against the uncompressed graph's;
- ``ort_ms``: ONNX Runtime CPU prefill (median; runs alternate between graphs so drift cancels), with the speedup
  over the uncompressed graph and the cost model's;
- ``kl`` and ``top1``: the first token's KL divergence from the uncompressed model and top-1 agreement with it, in
  PyTorch over ``--images`` synthetic images. The weights are random, so this is a proxy of the accuracy price only;
  ``eval --sweep --option budget_tile=...`` measures it on a real checkpoint.
Last line: ``tile64_node_ratio=<x>``. Usage:
    python benchmarks/budget_tile.py [--tiles 1 8 64] [--repeats 5] [--images 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
from common import optimized_node_count
from ort_prefill_speedup import export_prefill, open_prefill, time_alternating
from prefill_speedup import IMAGE_SIDE, TEXT_TOKENS, prompt_for, realistic_adapter

from luvc import LUVCConfig
from luvc.images import synthetic_image
from luvc.parity.metrics import kl_divergence


def first_token_logits(adapter, config: LUVCConfig, images: int) -> list[torch.Tensor]:
    """The first token's logits under ``config`` for each synthetic image (PyTorch)."""
    adapter.apply_luvc(config)
    logits = []
    for seed in range(images):
        image = synthetic_image(IMAGE_SIDE, IMAGE_SIDE, seed)
        inputs = adapter.prepare_inputs([image], prompt_for(adapter, TEXT_TOKENS))
        with torch.no_grad():
            logits.append(adapter.model(**inputs).logits[0, -1].float())
    return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=3)
    args = parser.parse_args()
    adapter = realistic_adapter("qwen2-vl")
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    configs = {"off": LUVCConfig.off(), **{f"tile {t}": LUVCConfig(budget_tile=t) for t in args.tiles}}
    reference = first_token_logits(adapter, configs["off"], args.images)
    with tempfile.TemporaryDirectory() as scratch:
        runs = {}
        for label, config in configs.items():
            began = time.perf_counter()
            path, run = export_prefill(adapter, config, Path(scratch), label.replace(" ", "_"))
            run["nodes"] = optimized_node_count(path)
            open_prefill(path, run)
            runs[label] = run
            print(f"exported the {label} prefill in {time.perf_counter() - began:.0f} s: {run['nodes']} nodes")
        time_alternating(runs, args.repeats)
        for run in runs.values():  # the PyTorch runs below need the memory
            del run["session"], run["feeds"]
    base = runs["off"]
    base_ms = statistics.median(base["seconds"]) * 1e3
    print(f"uncompressed: {base['nodes']} nodes, ORT prefill {base_ms:.1f} ms")
    untiled = None
    for tile in args.tiles:
        label = f"tile {tile}"
        run, config = runs[label], configs[label]
        plan = run["bucket"].budget_plan
        token_layers = sum(plan.total)
        untiled = untiled or token_layers
        adapter.apply_luvc(config)
        predicted = adapter.cost(run["inputs"]).llm_prefill_speedup
        logits = first_token_logits(adapter, config, args.images)
        kl = max(float(kl_divergence(a.numpy(), b.numpy())) for a, b in zip(logits, reference))
        top1 = sum(int(a.argmax() == b.argmax()) for a, b in zip(logits, reference)) / args.images
        ms = statistics.median(run["seconds"]) * 1e3
        print(
            f"tile={tile} cuts={len(plan.prune_layers())} token_layers={token_layers} "
            f"({token_layers / untiled:.3f} of tile 1) nodes={run['nodes']} ({run['nodes'] / base['nodes']:.3f} "
            f"of uncompressed) ort_ms={ms:.1f} (speedup {base_ms / ms:.2f}x, cost model {predicted:.2f}x) "
            f"kl={kl:.2e} top1={top1:.2f} budgets={list(plan.total)}"
        )
    if 64 in args.tiles:
        print(f"tile64_node_ratio={runs['tile 64']['nodes'] / base['nodes']:.3f}")


if __name__ == "__main__":
    main()
