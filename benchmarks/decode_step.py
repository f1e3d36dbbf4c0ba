"""Decode step: the in-place KV-cache decode graph against the concatenating one it replaced, on ONNX Runtime CPU.

Model: the Qwen2-0.5B-width language model of ``prefill_speedup.py`` (vocab 151936) with ``--layers`` decoder layers
(default 24, its real depth: about 5 minutes and 15 GB of memory on 2 cores). For each past length (256, 1024, 4096
by default) one step is timed:

- ``concat``: the decode graph as it was before the in-place update (``past_key_values.*`` of dynamic length in,
  ``present.*`` = past + the new token out, concatenated inside the graph), run as the old runtime ran it: outputs
  bound to preallocated ping-pong buffers, so each step still copies every layer's whole cache once;
- ``in-place``: the exported decode graph (``luvc.export.graphs.decode_spec``) with every layer's capacity at past
  length + 1, its cache buffers bound as both ``past`` input and ``present`` output (``TensorScatter``), and its
  attention reading the cache without repeating the KV heads (``luvc.export.llm.cached_attention``).

Both graphs go through the same graph passes and run in one process, alternating step by step; each figure is the
median of ``--steps`` steps. Then the in-place graph at a past of 64 tokens in caches of capacity 4096 against the
same in capacity 256: attention reads a window sized to the valid prefix (``luvc.runtime.kv_cache``), so the line
``decode_capacity_ratio=<4096 ms / 256 ms>`` should be near 1 (target <= 1.25). Last line:
``decode_speedup_at_4096=<concat ms / in-place ms>``; the in-place graph must not be slower at any length. Usage:
    python benchmarks/decode_step.py [--layers 24] [--steps 30] [--lengths 256,1024,4096]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from common import arguments
from prefill_speedup import realistic_adapter
from torch import nn
from torch.export import Dim

from luvc.engines.static_shapes import attention_window_length
from luvc.export.convert import OnnxFromGraphSpec
from luvc.export.graphs import EXAMPLE_BATCH, GraphSpec, decode_spec
from luvc.export.llm import GraphCache
from luvc.export.manifest_entries import kv_names
from luvc.export.passes import run_passes
from luvc.export.profile import ExportProfile

CAPACITY_PAST, SMALL_CAPACITY, LARGE_CAPACITY = 64, 256, 4096  # decode_capacity_ratio: one past, two capacities


class ConcatCache(GraphCache):
    """The old decode cache: past tensors of any length in, past + new concatenated out."""

    def __init__(self, past) -> None:
        super().__init__()
        self.past = list(past)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        past_key, past_value = self.past[layer_idx]
        present = (torch.cat([past_key, key_states], dim=-2), torch.cat([past_value, value_states], dim=-2))
        self.present[layer_idx] = present
        return present

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.past[layer_idx][0].shape[-2]


class ConcatDecodeGraph(nn.Module):
    """The decode step before the in-place update (the baseline)."""

    def __init__(self, adapter) -> None:
        super().__init__()
        self.language_model = adapter.language_model
        self.lm_head = adapter.model.lm_head

    def forward(self, inputs_embeds, position_ids, *past):
        cache = ConcatCache(zip(past[0::2], past[1::2]))
        outputs = self.language_model(
            inputs_embeds=inputs_embeds, position_ids=position_ids, past_key_values=cache, use_cache=True
        )
        return (self.lm_head(outputs.last_hidden_state[:, -1]).float(), *cache.flat_present())


class ConcatSpec(GraphSpec):
    """The baseline's spec: two leading inputs, then the variadic past."""

    def dynamic_shapes(self) -> tuple:
        shapes = [self.dims.get(name) for name in self.feeds]
        return (*shapes[:2], tuple(shapes[2:]))


def concat_spec(adapter) -> GraphSpec:
    config = adapter.language_model.config
    feeds = {
        "inputs_embeds": torch.randn(EXAMPLE_BATCH, 1, config.hidden_size),
        "position_ids": torch.full((3, EXAMPLE_BATCH, 1), 40),
    }
    batch = Dim("batch", min=1, max=4)
    dims = {"inputs_embeds": {0: batch}, "position_ids": {1: batch}}
    for layer in range(adapter.num_layers):
        past = Dim(f"past_sequence_length_{layer}", min=1, max=1 << 16)
        for name in kv_names("past_key_values", adapter.num_layers)[2 * layer : 2 * layer + 2]:
            feeds[name] = torch.randn(EXAMPLE_BATCH, config.num_key_value_heads, 8 + layer, adapter.head_dim)
            dims[name] = {0: batch, 2: past}
    outputs = ["logits", *kv_names("present", adapter.num_layers)]
    return ConcatSpec("decode_concat", "decode", ConcatDecodeGraph(adapter), feeds, outputs, dims)


def save(spec: GraphSpec, folder: Path) -> Path:
    model, _ = run_passes(OnnxFromGraphSpec(spec, 18)())
    path = folder / f"{spec.name}.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location=f"{spec.name}.data")
    return path


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Stepper:
    """Runs one decode step of a graph repeatedly at a fixed past length with IO binding (no allocation); an in-place
    graph's caches have ``capacity`` tokens (default past + 1) and its attention window is the runtime's."""

    def __init__(
        self, sess: ort.InferenceSession, adapter, past: int, in_place: bool, capacity: int | None = None
    ) -> None:
        capacity = capacity or past + 1
        config = adapter.language_model.config
        rng = np.random.default_rng(0)
        layers, heads, head_dim = adapter.num_layers, config.num_key_value_heads, adapter.head_dim
        self.session, self.binding = sess, sess.io_binding()
        self.feeds = {
            "inputs_embeds": rng.standard_normal((1, 1, config.hidden_size), dtype=np.float32),
            "position_ids": np.full((3, 1, 1), past, dtype=np.int64),
        }
        self.outputs = {"logits": np.empty((1, config.vocab_size), np.float32)}
        for layer in range(layers):
            for kind in ("key", "value"):
                if in_place:  # the step writes at index past, in place
                    cache = rng.standard_normal((1, heads, capacity, head_dim), dtype=np.float32)
                    self.feeds[f"past_key_values.{layer}.{kind}"] = self.outputs[f"present.{layer}.{kind}"] = cache
                else:
                    self.feeds[f"past_key_values.{layer}.{kind}"] = rng.standard_normal(
                        (1, heads, past, head_dim), dtype=np.float32
                    )
                    self.outputs[f"present.{layer}.{kind}"] = np.empty((1, heads, past + 1, head_dim), np.float32)
        if in_place:
            self.feeds["kv_write_index"] = np.full((layers, 1), past, dtype=np.int64)  # (layers, rows)
            self.feeds["attention_window"] = np.zeros(attention_window_length(past + 1, capacity), dtype=bool)
        for name, array in {**self.feeds, **self.outputs}.items():
            kind = "input" if name in self.feeds else "output"
            bind = self.binding.bind_input if kind == "input" else self.binding.bind_output
            bind(name, "cpu", 0, array.dtype.type, list(array.shape), array.ctypes.data)

    def step(self) -> float:
        began = time.perf_counter()
        self.session.run_with_iobinding(self.binding)
        return time.perf_counter() - began


def median_ms(steppers: dict, steps: int) -> dict:
    """Median ms per step of each stepper, run alternating step by step after a warm-up."""
    times = {name: [] for name in steppers}
    for _ in range(3):
        for stepper in steppers.values():
            stepper.step()
    for _ in range(steps):
        for name, stepper in steppers.items():
            times[name].append(stepper.step())
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def main() -> None:
    parser = arguments(__doc__, layers=24, steps=30)
    parser.add_argument("--lengths", default="256,1024,4096")
    args = parser.parse_args()
    lengths = [int(text) for text in args.lengths.split(",")]

    adapter = realistic_adapter()
    adapter.model.config.text_config.num_hidden_layers = args.layers
    adapter.language_model.layers = adapter.language_model.layers[: args.layers]
    adapter.apply_luvc()
    profile = ExportProfile(max_batch=1).resolve(adapter)
    results = {}
    with tempfile.TemporaryDirectory() as scratch, torch.no_grad():
        folder = Path(scratch)
        began = time.perf_counter()
        concat = session(save(concat_spec(adapter), folder))
        in_place = {}
        for past in lengths:
            spec = decode_spec(adapter, profile, [past + 1] * args.layers)
            spec.name = f"decode_{past}"
            in_place[past] = session(save(spec, folder))
        by_capacity = {}
        for capacity in (SMALL_CAPACITY, LARGE_CAPACITY):
            spec = decode_spec(adapter, profile, [capacity] * args.layers)
            spec.name = f"decode_capacity_{capacity}"
            by_capacity[capacity] = session(save(spec, folder))
        print(f"exported {len(lengths) + 3} decode graphs in {time.perf_counter() - began:.0f} s")
        for past in lengths:
            steppers = {
                "concat": Stepper(concat, adapter, past, in_place=False),
                "in-place": Stepper(in_place[past], adapter, past, in_place=True),
            }
            results[past] = median_ms(steppers, args.steps)
        capacity_ms = median_ms(
            {c: Stepper(s, adapter, CAPACITY_PAST, True, capacity=c) for c, s in by_capacity.items()}, args.steps
        )
    cfg = adapter.language_model.config
    print(
        f"{args.layers} layers, hidden {cfg.hidden_size}, {cfg.num_key_value_heads} KV heads x {adapter.head_dim}, "
        f"vocab {cfg.vocab_size}, batch 1, fp32; median of {args.steps} steps"
    )
    print(f"{'past length':>12} {'concat ms':>10} {'in-place ms':>12} {'speedup':>8}")
    for past, row in results.items():
        print(f"{past:>12} {row['concat']:>10.2f} {row['in-place']:>12.2f} {row['concat'] / row['in-place']:>8.2f}")
    slower = [past for past, row in results.items() if row["in-place"] > row["concat"]]
    print("in-place slower at: " + (", ".join(map(str, slower)) if slower else "no length"))
    print(
        f"past {CAPACITY_PAST}: {capacity_ms[LARGE_CAPACITY]:.2f} ms in caches of capacity {LARGE_CAPACITY}, "
        f"{capacity_ms[SMALL_CAPACITY]:.2f} ms in capacity {SMALL_CAPACITY}"
    )
    print(f"decode_capacity_ratio={capacity_ms[LARGE_CAPACITY] / capacity_ms[SMALL_CAPACITY]:.2f}")
    last = lengths[-1]
    print(f"decode_speedup_at_{last}={results[last]['concat'] / results[last]['in-place']:.2f}")


if __name__ == "__main__":
    main()
