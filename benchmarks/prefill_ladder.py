"""A hybrid model's prefill ladder: a short prompt on the shortest rung that holds it against the longest graph, on
ONNX Runtime CPU, in one process.

A Qwen3.5 export traces each prefill at a few fixed lengths (``luvc.export.graphs.ladder_lengths``); before the ladder
every prompt was padded to the longest. For one synthetic image of the first bucket's size and ``--prompt``, and for
the same prompt without the image (the text prefill), each rung that holds the prompt is run ``--repeats`` times on the
same feeds padded to its length (the median is printed); the rung the runtime picks (``Sessions.prefill_shape``) is
marked. Last line: ``ladder_prefill_speedup=<longest ms / picked rung ms>`` for the image prompt. Usage:
    luvc-export export --model FOLDER_OR_tiny-qwen3.5 --out EXPORT
    python benchmarks/prefill_ladder.py EXPORT [--repeats 5] [--prompt "Describe the picture."]
"""

from __future__ import annotations

import statistics
import time

from common import arguments, cpu_description

from luvc.engines.static_shapes import ladder
from luvc.images import synthetic_image
from luvc.runtime.options import GenerationOptions
from luvc.runtime.pipeline import Pipeline
from luvc.runtime.prefill import feeds_at, prefill_graph


def _rows(pipeline: Pipeline, image, prompt: str, repeats: int) -> tuple[float, float]:
    """Print each rung's median prefill ms for ``prompt`` (with ``image``, or none); the longest's and the picked
    rung's."""
    prepared = pipeline.prepare([image] if image is not None else None, [prompt])
    request = pipeline.request(prepared, GenerationOptions(1))
    request.step()  # opens the sessions and gives the image features
    sessions, width = pipeline.sessions, prepared.prompts.input_ids.shape[1]
    rungs = ladder(pipeline.manifest, prefill_graph(pipeline.manifest, prepared.bucket))
    if not rungs:
        raise SystemExit(f"{pipeline.folder} has no prefill ladder (not a hybrid model's export).")
    picked, _ = sessions.prefill_shape(rungs[-1][1], width)
    times = {}
    for length, graph in rungs:
        if length < width:
            continue
        feeds = feeds_at(pipeline.feeds, prepared, request.image_features, length)
        sessions[graph].infer(feeds)  # warm
        samples = []
        for _ in range(repeats):
            began = time.perf_counter()
            sessions[graph].infer(feeds)
            samples.append((time.perf_counter() - began) * 1e3)
        times[graph] = statistics.median(samples)
        mark = "  <- picked" if graph == picked else ""
        print(f"  {graph:32s} {length:5d} tokens  {times[graph]:8.1f} ms{mark}")
    longest = times[rungs[-1][1]]
    print(f"  prompt of {width} tokens: {longest / times[picked]:.2f}x faster on {picked} than on {rungs[-1][1]}")
    return longest, times[picked]


def main() -> None:
    parser = arguments(__doc__, repeats=5)
    parser.add_argument("export", help="a hybrid model's export folder (Qwen3.5)")
    parser.add_argument("--prompt", default="Describe the picture.")
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}")
    pipeline = Pipeline(args.export).load()
    bucket = next(iter(pipeline.manifest.buckets.values()))
    height, width = bucket.image_size
    print(f"image {height}x{width}, prompt {args.prompt!r}:")
    longest, picked = _rows(pipeline, synthetic_image(height, width, 0), args.prompt, args.repeats)
    print("the same prompt without the image (text prefill):")
    _rows(pipeline, None, args.prompt, args.repeats)
    print(f"ladder_prefill_speedup={longest / picked:.2f}")


if __name__ == "__main__":
    main()
