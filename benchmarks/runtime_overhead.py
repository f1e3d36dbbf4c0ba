"""Runtime overhead: ``Pipeline`` wall time against the bare ONNX Runtime session runs it makes, on CPU.

Model: the realistic Qwen2-VL of ``prefill_speedup.py`` (Qwen2-0.5B widths, vocab 151936) with ``--layers``
decoder layers (default 8, to keep the export short), one 448x448 image, default LUVC, exported to fp32 ONNX.
Each repeat generates ``--new-tokens`` greedy tokens with a ``Pipeline.request`` (inputs already preprocessed;
preprocessing is timed apart). The feeds of every session run are recorded once beforehand, in an untimed generation
(greedy: each repeat makes the same runs), and replayed through plain ``InferenceSession.run`` calls on sessions
configured as the pipeline's (weights shared through ``MappedWeights``, prepacking off). Overhead =
(pipeline wall time - bare session time) / pipeline wall time: the host work between graphs (embedding merge,
positions, KV-cache handling, feed checks, sampling). It can be negative: the bare runs allocate every output (and
the decode graph copies each layer's cache), while the pipeline's decode writes the KV cache in place (IO binding).
The time inside the pipeline's own session runs is printed too, as a second measure.
Last line: ``runtime_overhead=<fraction>`` (target <= 0.05). Usage:
    python benchmarks/runtime_overhead.py [--repeats 5] [--layers 8] [--new-tokens 32]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from common import arguments
from prefill_speedup import realistic_adapter

from luvc.export.exporter import export_model
from luvc.export.profile import ExportProfile
from luvc.images import synthetic_image
from luvc.runtime.base_session import BaseSession
from luvc.runtime.pipeline import GenerationOptions, Pipeline, Prepared
from luvc.runtime.weights import MappedWeights

IMAGE_SIDE = 448
PROMPT = "Describe the image in detail, please."


def recorded_feeds(pipeline: Pipeline, prepared: Prepared, options: GenerationOptions) -> list[tuple[Path, dict]]:
    """The (graph file, feeds) of every session run one generation makes (host copies, taken outside the timing)."""
    calls, original = [], BaseSession.infer

    def recording(session, feeds, targets=None):
        calls.append((session.path, {name: np.array(value) for name, value in feeds.items()}))
        return original(session, feeds, targets)

    BaseSession.infer = recording
    try:
        for _ in pipeline.request(prepared, options):
            pass
        return calls
    finally:
        BaseSession.infer = original


def timed_generation(pipeline: Pipeline, prepared: Prepared, options: GenerationOptions) -> tuple[float, float]:
    """Wall seconds of one generation and the seconds spent inside its session runs."""
    began = time.perf_counter()
    request = pipeline.request(prepared, options)
    for _ in request:
        pass
    return time.perf_counter() - began, request.timings.session_ms / 1e3


def main() -> None:
    parser = arguments(__doc__, repeats=5, layers=8, new_tokens=32)
    args = parser.parse_args()

    import prefill_speedup

    prefill_speedup.IMAGE_SIDE = IMAGE_SIDE
    adapter = realistic_adapter()
    adapter.model.config.text_config.num_hidden_layers = args.layers
    adapter.model.model.language_model.layers = adapter.model.model.language_model.layers[: args.layers]
    with tempfile.TemporaryDirectory() as scratch:
        began = time.perf_counter()
        profile = ExportProfile(image_sizes=((IMAGE_SIDE, IMAGE_SIDE),), max_batch=1, max_new_tokens=args.new_tokens)
        folder = export_model(adapter, Path(scratch) / "export", profile)
        print(f"exported in {time.perf_counter() - began:.0f} s")
        pipeline = Pipeline(folder)
        image = synthetic_image(IMAGE_SIDE, IMAGE_SIDE)
        began = time.perf_counter()
        prepared = pipeline.prepare([image], [PROMPT])
        preprocess = time.perf_counter() - began
        pipeline.load(prepared.bucket)
        bare_sessions, kept_alive = {}, []
        shared = MappedWeights(folder)  # the pipeline's session configuration: one copy of the weights
        for graph in pipeline.manifest.graphs.values():
            options = ort.SessionOptions()
            options.log_severity_level = 3
            graph_proto = onnx.load(str(folder / graph.file), load_external_data=False)
            model, values = shared.session_model(graph_proto, options)
            bare_sessions[folder / graph.file] = ort.InferenceSession(model, options)
            kept_alive.append(values)
        options = GenerationOptions(args.new_tokens, stop_token_ids=())
        calls = recorded_feeds(pipeline, prepared, options)  # greedy: every generation makes these same runs
        walls, bares, insides = [], [], []
        for repeat in range(args.repeats + 1):  # the first round warms up
            wall, inside = timed_generation(pipeline, prepared, options)
            began = time.perf_counter()
            for path, feeds in calls:
                bare_sessions[path].run(None, feeds)
            bare = time.perf_counter() - began
            if repeat:
                walls.append(wall)
                bares.append(bare)
                insides.append(inside)
    wall, bare, inside = statistics.median(walls), statistics.median(bares), statistics.median(insides)
    print(
        f"{args.layers} decoder layers, {IMAGE_SIDE}x{IMAGE_SIDE} image, {prepared.input_ids.shape[1]} prompt tokens, "
        f"{args.new_tokens} new tokens, {len(calls)} session runs per request; median of {args.repeats}"
    )
    print(f"preprocessing (image processor + tokenizer, not in the ratio): {preprocess * 1e3:.1f} ms")
    print(f"pipeline wall: {wall * 1e3:.1f} ms; bare session runs: {bare * 1e3:.1f} ms")
    print(
        f"time inside the pipeline's own session runs: {inside * 1e3:.1f} ms "
        f"(host work between them: {(wall - inside) / wall:.3f} of the wall time)"
    )
    print(f"runtime_overhead={(wall - bare) / wall:.3f}")


if __name__ == "__main__":
    main()
