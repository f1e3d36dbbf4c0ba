"""Optimization profiles from an export manifest: every symbolic dimension gets ``(min, opt, max)``.

Ranges come from the export profile (``max_batch``, ``max_text_tokens``, ``max_new_tokens``) and the buckets
(image span, minimum text, per-layer budgets), so an engine accepts exactly what the export promised:

- ``batch``, ``images``: 1 .. max_batch (opt 1);
- prefill ``sequence_length``: the bucket's visual tokens and shortest text (no text before them) .. its prompt in the
  template + max_text_tokens (opt: the template's prompt);
- embed ``sequence_length``: 1 .. the longest context (any prompt, or one decode token);
- text prefill ``sequence_length`` (prompts without visuals): 2 .. the smallest KV capacity less ``max_new_tokens``;
- decode: ``batch`` and ``attention_window`` (1 .. the largest capacity: the tokens attention reads); each layer's KV
  cache has its fixed capacity (manifest ``kv_cache.capacity``), as TensorRT's KV-cache update layer requires.
"""

from __future__ import annotations

from luvc.errors import critical
from luvc.export.inspect import evaluate_dim
from luvc.export.manifest import ExportManifest
from luvc.export.manifest_entries import BucketEntry

Range = tuple[int, int, int]


def _prompt(bucket: BucketEntry) -> int:
    """Prompt tokens before the text: the template prefix and the image tokens."""
    return bucket.visual_end


def dimension_ranges(manifest: ExportManifest, graph: str) -> dict[str, Range]:
    """``(min, opt, max)`` of every symbolic dimension name used by ``graph``'s inputs."""
    profile, buckets = manifest.profile, manifest.buckets
    entry = manifest.graphs[graph]
    max_batch, max_text, max_new = profile.max_batch, profile.max_text_tokens, profile.max_new_tokens
    ranges: dict[str, Range] = {"batch": (1, 1, max_batch), "images": (1, 1, max_batch)}
    if entry.kind == "prefill" and entry.bucket is not None:  # a prefill graph belongs to a bucket
        bucket = buckets[entry.bucket]
        templated = _prompt(bucket) + bucket.min_text_tokens
        longest = _prompt(bucket) + max(max_text, bucket.min_text_tokens)
        ranges["sequence_length"] = (templated - bucket.visual_start, min(longest, templated + 64), longest)
    elif entry.kind == "text":  # up to the tokens every layer's cache holds with the longest answer
        longest = manifest.longest_text_prompt
        ranges["sequence_length"] = (2, min(longest, 64), longest)
    elif entry.kind == "embed":
        longest = max(_prompt(b) + max_text + max_new for b in buckets.values())
        ranges["sequence_length"] = (1, min(longest, max(_prompt(b) for b in buckets.values()) + 64), longest)
    elif entry.kind == "decode":
        largest = max(manifest.kv_cache.capacity)
        ranges["attention_window"] = (1, min(largest, 512), largest)
    return ranges


def input_profile(manifest: ExportManifest, graph: str) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """``{input: (min shape, opt shape, max shape)}`` for ``graph``; static inputs have min = opt = max."""
    ranges = dimension_ranges(manifest, graph)
    shapes = {}
    for entry in manifest.graphs[graph].inputs:
        low: list[int] = []
        opt: list[int] = []
        high: list[int] = []
        for dim in entry.shape:
            found = [evaluate_dim(dim, {name: bounds[i] for name, bounds in ranges.items()}) for i in range(3)]
            values = [value for value in found if value is not None]
            if len(values) != len(found):
                critical(
                    f"Input {entry.name} of {graph} has dimension {dim!r} that no profile rule covers; "
                    "re-export with this version of luvc-export."
                )
            for shape, value in zip((low, opt, high), values):
                shape.append(value)
        shapes[entry.name] = (low, opt, high)
    return shapes
