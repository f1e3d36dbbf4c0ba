"""What LUVC asks of the host, LUVC against the same model with compression off, measured on the CPU.

A GPU at batch 1 is host-bound: each node of an ONNX graph and each operator of a PyTorch forward is a launch the
host issues, and each value read back stalls it. So the compressed model must not bring many more of them than its
smaller matrices save. This prints, for ``--model`` (default the built-in tiny Qwen2-VL; a checkpoint folder works):
- ``node_ratio``: nodes of the vision and prefill graphs of one bucket after ONNX Runtime's own optimisation
  (``ORT_ENABLE_ALL``, CPU EP), an export against its ``--no-luvc`` export, both made in this run;
- ``shape_only_added``: nodes of those graphs that only compute shapes (``luvc.export.inspect.shape_only_nodes``;
  ONNX Runtime's CUDA EP places them on the CPU), LUVC's minus the other's, with the kinds LUVC adds;
- ``sync_ops_added``: operators that wait for the device (``luvc.models.dispatches.SYNC_OPS``) in one PyTorch forward
  with LUVC, minus those with it off;
- ``dispatch_ratio``: operators dispatched by that forward, LUVC against off;
- ``compile_graph_breaks``: graph breaks ``torch._dynamo.explain`` finds in the LUVC LLM forward as ``compile_llm``
  compiles it (the decoder loop after the forward's host checks; -1 when it could not trace it; the reason is printed).
Last line: ``gpu_overhead_proxy_ok=<0|1>``: 1 when the node and dispatch ratios are at most 1.11 and no sync is added.
Usage:
    python benchmarks/graph_overhead.py [--model tiny-qwen2-vl] [--image-size 224]
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch
from common import arguments, luvc_export

from luvc.compress.config import LUVCConfig
from luvc.export.inspect import ort_optimized, shape_only_nodes
from luvc.export.manifest import ExportManifest
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.compiled import explain_loop
from luvc.models.dispatches import count_dispatches

TARGET = 1.11  # tests/export/test_graph_overhead.py's MAX_NODE_RATIO, and why it is not 1.1


def optimized_graphs(export: Path) -> dict:
    """Each vision and prefill graph of ``export`` after ONNX Runtime's optimisation (CPU EP)."""
    manifest = ExportManifest.load(export, verify=False)
    return {
        name: ort_optimized(export / graph.file)
        for name, graph in manifest.graphs.items()
        if graph.kind in ("vision", "prefill")
    }


def graph_breaks(model: str, side: int) -> int:
    """Graph breaks in the LUVC LLM forward as ``compile_llm`` compiles it (the decoder loop, after the forward's host
    checks) under ``torch._dynamo.explain`` (-1: it could not trace it)."""
    adapter = load_model(model)
    adapter.apply_luvc()
    inputs = adapter.prepare_inputs([synthetic_image(side, side)], "Describe the image.")
    try:
        explanation = explain_loop(adapter, inputs)
    except Exception as error:  # a trace failure is a finding, not a crash of the benchmark
        print(f"torch._dynamo.explain could not trace the forward: {type(error).__name__}: {str(error)[:200]}")
        return -1
    for reason in explanation.break_reasons[:5]:
        print(f"  graph break: {reason.reason[:160]}")
    return explanation.graph_break_count


def main() -> None:
    parser = arguments(__doc__, image_size=224)
    parser.add_argument("--model", default="tiny-qwen2-vl", help="a built-in model or a checkpoint folder")
    args = parser.parse_args()
    side = args.image_size
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.model}")
    with tempfile.TemporaryDirectory(prefix="luvc-graph-overhead-") as tmp:
        nodes, shape_only = {}, {}
        for label, flags in (("luvc", []), ("off", ["--no-luvc"])):
            out = Path(tmp) / label
            luvc_export("export", "--model", args.model, "--out", str(out), "--image-size", f"{side}x{side}", *flags)
            graphs = optimized_graphs(out)
            nodes[label] = {name: len(graph.graph.node) for name, graph in graphs.items()}
            shape_only[label] = sum((shape_only_nodes(graph) for graph in graphs.values()), collections.Counter())
        for name in nodes["luvc"]:
            print(f"{name}: {nodes['luvc'][name]} nodes with LUVC, {nodes['off'].get(name)} without (ORT-optimised)")
        node_ratio = sum(nodes["luvc"].values()) / sum(nodes["off"].values())
        added = shape_only["luvc"] - shape_only["off"]
        print(f"shape-only nodes: {shape_only['luvc'].total()} with LUVC, {shape_only['off'].total()} without")
    counts = {}
    for label, config in (("luvc", None), ("off", LUVCConfig.off())):
        adapter = load_model(args.model)
        adapter.apply_luvc(config)
        inputs = adapter.prepare_inputs([synthetic_image(side, side)], "Describe the image.")
        count_dispatches(adapter.model, **inputs)  # warm-up: lazy initialisation dispatches too
        counts[label] = count_dispatches(adapter.model, **inputs)
        print(f"{label}: {counts[label].total} operators, syncs {dict(counts[label].syncs)}")
    syncs_added = sum(counts["luvc"].syncs.values()) - sum(counts["off"].syncs.values())
    dispatch_ratio = counts["luvc"].total / counts["off"].total
    breaks = graph_breaks(args.model, side)
    print(f"node_ratio={node_ratio:.3f}")
    print(f"shape_only_added={shape_only['luvc'].total() - shape_only['off'].total()} {dict(added)}")
    print(f"sync_ops_added={syncs_added}")
    print(f"dispatch_ratio={dispatch_ratio:.3f}")
    print(f"compile_graph_breaks={breaks}")
    ok = node_ratio <= TARGET and dispatch_ratio <= TARGET and syncs_added <= 0
    print(f"gpu_overhead_proxy_ok={int(ok)}")


if __name__ == "__main__":
    main()
