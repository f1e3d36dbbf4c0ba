"""Memory plan of an export on a target device: what the engines, the KV cache and the activations need against
the device's memory, and which ``--max-*`` to lower when it does not fit (``luvc-export plan``).

- **Weights**: in the shared layout (``luvc-export build``'s default, ``luvc.engines.weight_inputs``) the matrices
  and embedding tables of ``weights.data`` are on the device once, bound to every engine that takes them, and each
  engine holds only the rest (norms, biases, convolution kernels, constants, quantized weights); beside it, what the
  embedded layout (every engine its own copy: the LLM once per prefill bucket plus once for decode) would need. With
  an engine folder the figures come from its manifest (engine file sizes and the weight inputs it records), else
  from the ONNX graphs.
- **KV cache**: the runtime's fixed-capacity buffers at the profile's ``max_batch`` (per layer: the capacity the
  decode graph was exported with, ``kv_cache.capacity``), the figure ``luvc-export run`` reports; beside it the same
  for the uncompressed model (every layer holds every visual token of the image, before OIM).
- **Activations**: one buffer that every engine's execution context shares (``luvc.runtime.activations``), counted
  once at the builder's workspace limit of the target preset (an upper bound TensorRT may use for tactics and
  activations), 2 GiB where the preset sets none.
- **CUDA graphs** (``--cuda-graphs off`` leaves it out): replaying captured graphs (``luvc.runtime.replay``) keeps
  persistent buffers for every input and output of each captured shape but the KV caches it updates in place (a
  prefill's hold its presents); counted for every shape the export runs at (``luvc.engines.static_shapes``), each
  graph's at most the replayer's limits (``MAX_BUFFER_BYTES``, ``MAX_CAPTURED`` shapes). The graphs' own memory
  inside ONNX Runtime's or TensorRT's captures is not counted.
- **Reserved**: the CUDA context, libraries and (on a Jetson, whose CPU and GPU share the memory) the OS.
- **OpenVINO on the CPU** (``--backend openvino``; ``openvino_weight_placement``): no weights are shared. Each
  compiled graph holds its own copy of what it reads, float tables and norms widened to f32 and each product's weight
  in the compute precision (bf16 where the CPU has bf16 kernels), repacked for its kernels at the graph's first run.
  The compiled copy it repacks from is the start-up cache's mapped blob, released once the graph has run
  (``luvc.runtime.mapped_pages``): counted once, as the first run of the graph with the most product weights holds
  it (``WeightPlacement.first_run``). A start that compiles (the first, or any without the start-up cache) maps
  nothing, and both copies stay for that process. Measured at Qwen2-VL-2B widths
  with 8 layers (fp16 export, bf16, one 448x448 request, warm): 3.2 GiB resident after it, 4.3 GiB at the peak
  (6.7 GiB and 6.7 GiB with the blobs kept resident); the estimate counts every graph the runtime may compile (the
  text prefill too).
- **Build host memory** (an estimate): twice the largest graph's weights (the parsed network and the serialized
  engine) plus 1 GiB; on a Jetson, engines are built on the device, so this shares its memory too.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from luvc.cuda_graphs import MAX_BUFFER_BYTES, MAX_CAPTURED, RUNTIME_REPLAY_BY_DEFAULT
from luvc.engines.static_shapes import StaticShapes
from luvc.engines.targets import get_target
from luvc.engines.weight_inputs import engine_graph, external_initializers, shareable_weights
from luvc.errors import critical
from luvc.export.manifest import ONNX_DTYPES, ExportManifest, ExternalTensor
from luvc.export.manifest_entries import dtype_bytes
from luvc.export.profile import layer_capacity

if TYPE_CHECKING:
    from luvc.engines.manifest import EngineManifest

GiB = 1 << 30
DEFAULT_ACTIVATION_BYTES = 2 * GiB
GPU_RESERVED_BYTES = 1 * GiB  # a discrete GPU's CUDA context and what the driver keeps
MAX_GPU_GIB = 1024  # more than one GPU holds (B300: 288 GB): a larger --target is a typo


@dataclasses.dataclass(frozen=True)
class Device:
    """A target's memory: ``total_bytes`` and what the system keeps (``reserved_bytes``)."""

    name: str
    total_bytes: int
    reserved_bytes: int
    preset: str  # the engines target preset (its builder workspace sizes the activation allowance)

    @property
    def jetson(self) -> bool:
        return self.preset in ("orin", "thor")


DEVICES = {
    "orin-8gb": Device("Jetson Orin Nano/NX 8 GB", 8 * GiB, 2 * GiB, "orin"),
    "orin-16gb": Device("Jetson Orin NX 16 GB", 16 * GiB, 2 * GiB, "orin"),
    "orin-32gb": Device("Jetson AGX Orin 32 GB", 32 * GiB, 3 * GiB, "orin"),
    "orin-64gb": Device("Jetson AGX Orin 64 GB", 64 * GiB, 3 * GiB, "orin"),
    "thor": Device("Jetson AGX Thor 128 GB", 128 * GiB, 4 * GiB, "thor"),
}


def device(target: str) -> Device:
    """A device preset, or a GPU of ``target`` GiB (a discrete GPU: 1 GiB reserved for the CUDA context): plain
    decimals (``80``, ``7.5``; not ``8_0`` or ``1e3``), more than the reserve and at most ``MAX_GPU_GIB``."""
    if target in DEVICES:
        return DEVICES[target]
    number = target.removesuffix("GiB").removesuffix("gib")
    if not re.fullmatch(r"\d+(\.\d+)?", number):
        critical(f"Target {target!r} is neither a device ({', '.join(DEVICES)}) nor a size in GiB (e.g. 80).")
    size = float(number)
    if size * GiB <= GPU_RESERVED_BYTES:
        critical(
            f"Target {target!r}: a GPU of {size:g} GiB holds no more than the {GPU_RESERVED_BYTES / GiB:g} GiB kept "
            "for the CUDA context; give the GPU's whole memory in GiB (e.g. 24, 80)."
        )
    if size > MAX_GPU_GIB:
        critical(f"Target {target!r}: no GPU has {size:g} GiB; give its memory in GiB (at most {MAX_GPU_GIB}).")
    return Device(f"GPU with {size:g} GiB", int(size * GiB), GPU_RESERVED_BYTES, "hopper")


@dataclasses.dataclass(frozen=True)
class WeightPlacement:
    """Where the weights of an export's engines live: ``per_engine`` bytes each engine holds itself, ``shared`` bytes
    on the device once for all of them, and ``embedded_layout`` bytes were every engine to hold its own copy."""

    per_engine: dict[str, int]
    shared: int
    embedded_layout: int
    source: str  # "engines", "onnx" or "openvino"
    first_run: int = 0  # OpenVINO: the compiled copy a graph repacks from at its first run (the largest graph's)

    @property
    def total(self) -> int:
        return sum(self.per_engine.values()) + self.shared + self.first_run


@dataclasses.dataclass
class MemoryPlan:
    """Bytes per item on ``device`` for an export at its profile's maxima (see the module docstring)."""

    device: Device
    weights: WeightPlacement
    kv_bytes: int
    kv_bytes_uncompressed: int | None
    kv_bytes_per_row: int
    max_batch: int
    activation_bytes: int
    build_host_bytes: int
    replay_bytes: int = 0  # CUDA graphs' persistent buffers, every planned shape captured (at most)
    replay_shapes: int = 0  # the shapes those are for (``luvc.engines.static_shapes``)
    replay_bytes_per_row: int = 0

    @property
    def weight_bytes(self) -> int:
        return self.weights.total

    @property
    def total_bytes(self) -> int:
        """What the deployment needs on the device, with the reserve."""
        fixed = self.weight_bytes + self.activation_bytes + self.device.reserved_bytes
        return fixed + self.kv_bytes + self.replay_bytes

    @property
    def bytes_per_row(self) -> int:
        """What one more batch row costs: its KV cache and its share of the CUDA graphs' buffers."""
        return self.kv_bytes_per_row + self.replay_bytes_per_row

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.device.total_bytes

    def advice(self) -> list[str]:
        """What to change when the plan does not fit (empty when it fits)."""
        if self.fits:
            return []
        over = self.total_bytes - self.device.total_bytes
        lines = [f"{over / GiB:.2f} GiB over the {self.device.total_bytes / GiB:g} GiB of {self.device.name}."]
        fixed = self.device.reserved_bytes + self.activation_bytes
        if fixed >= self.device.total_bytes:  # no export can fit: neither batch rows nor weights are the cause
            lines.append(
                f"The device's reserve ({self.device.reserved_bytes / GiB:.2f} GiB) and activations "
                f"({self.activation_bytes / GiB:.2f} GiB) alone take all of it: choose a device with more memory."
            )
            return lines
        room = self.device.total_bytes - (self.total_bytes - self.kv_bytes - self.replay_bytes)
        rows = room // self.bytes_per_row if self.bytes_per_row and room > 0 else 0
        replay = f", CUDA graphs' buffers {self.replay_bytes_per_row / GiB:.2f}" if self.replay_bytes_per_row else ""
        if 1 <= rows < self.max_batch:
            lines.append(
                f"Re-export with --max-batch {rows}: the KV cache takes {self.kv_bytes_per_row / GiB:.2f} GiB per "
                f"batch row{replay}."
            )
        elif rows < 1:
            lines.append(
                "Even one batch row does not fit: re-export with a smaller --max-new-tokens or --max-text-tokens "
                f"(KV cache {self.kv_bytes_per_row / GiB:.2f} GiB per row{replay}) and fewer buckets or smaller "
                "weights."
            )
        if self.replay_bytes:
            lines.append(f"Serving with --cuda-graphs off saves the CUDA graphs' {self.replay_bytes / GiB:.2f} GiB.")
        per_engine = self.weights.per_engine
        if self.weights.source == "openvino":
            lines.append(
                "OpenVINO holds each graph's weights itself: weight-only INT8 or INT4 "
                "(luvc-export calibrate --precision int8w|int4) holds a half or a quarter of fp16's, or run with "
                "--backend ort, which holds the weights once for every graph."
            )
            return lines
        prefills = sorted(name for name in per_engine if name.startswith("prefill_"))
        if len(prefills) > 1 and not self.weights.shared:
            lines.append(
                f"Build with the shared weights layout (the default) or export fewer --image-size buckets: each "
                f"prefill engine holds the LLM weights again ({per_engine[prefills[-1]] / GiB:.2f} GiB for "
                f"{prefills[-1]})."
            )
        llm_engines = [name for name in per_engine if name.startswith("prefill") or name == "decode"]
        lines.append(
            "INT8 weights (luvc-export calibrate --precision int8, or weight-only int8w) halve fp16 weights; INT4 "
            "weight-only (--precision int4) keeps the LLM's linear layers in about a quarter of their fp16 bytes. "
            "TensorRT keeps quantized "
            f"weights inside each engine, so this export's {len(llm_engines)} LLM engines would each hold them: with "
            "more than one image bucket that can cost more than shared fp16 weights."
        )
        return lines


def graph_weight_bytes(path: Path) -> int:
    """Bytes of a graph's initializers (external ones from their recorded lengths), without loading them."""
    return model_weight_bytes(onnx.load(str(path), load_external_data=False))


def model_weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of ``model``'s initializers (loaded without external data; external ones from their recorded lengths)."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            total += ExternalTensor.of(tensor).length
        else:
            count = 1
            for dim in tensor.dims:
                count *= dim
            total += count * dtype_bytes(ONNX_DTYPES[tensor.data_type])
    return total


def kv_bytes(manifest: ExportManifest, batch: int, uncompressed: bool = False) -> int:
    """Bytes of the KV-cache buffers for ``batch`` rows: the decode graph's capacities, or (``uncompressed``) the
    capacities the uncompressed model would need; a hybrid model's attention layers only, and its linear-attention
    layers' states (the same either way)."""
    geometry, profile = manifest.geometry, manifest.profile
    names = geometry.cache_names("past_key_values")
    past = manifest.graphs["decode"].input(next(name for name in names if name.endswith(".key")))
    per_entry = 2 * batch * geometry.num_key_value_heads * geometry.head_dim * dtype_bytes(past.dtype)
    states = batch * geometry.state_bytes_per_row(dtype_bytes(past.dtype))
    attending = [layer for layer in range(geometry.num_layers) if geometry.attends(layer)]
    if not uncompressed:
        return per_entry * sum(manifest.kv_cache.capacity[layer] for layer in attending) + states
    buckets = manifest.buckets.values()
    capacity = max(
        layer_capacity(
            bucket.visual_end - bucket.tokens_per_image,
            bucket.uncompressed_tokens_per_image,
            bucket.min_text_tokens,
            profile.max_text_tokens,
            profile.max_new_tokens,
        )
        for bucket in buckets
    )
    return per_entry * capacity * len(attending) + states


PRODUCTS = frozenset({"MatMul", "Gemm"})
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})


@dataclasses.dataclass(frozen=True)
class OpenVinoGraphBytes:
    """Bytes OpenVINO holds for one graph's weights: ``held`` once it has run (see the module docstring), and
    ``first_run`` more while it first runs (its products' compiled copy, repacked from, then released)."""

    held: int
    first_run: int


def openvino_graph_bytes(model: onnx.ModelProto, precision: str = "bf16") -> OpenVinoGraphBytes:
    """What OpenVINO holds for ``model``'s weights: a float weight of a product in ``precision`` (``bf16`` or
    ``f32``), a quantized one as stored, every other float initializer in f32, the rest as stored; the products'
    weights once more during the first run."""
    product_weights = {node.input[1] for node in model.graph.node if node.op_type in PRODUCTS and len(node.input) > 1}
    dequantized = {node.output[0]: node.input[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    product_weights |= {dequantized[name] for name in list(product_weights) if name in dequantized}
    held = products = 0.0  # packed INT4 takes half a byte an element
    for tensor in model.graph.initializer:
        count = 1
        for dim in tensor.dims:
            count *= dim
        external = ExternalTensor.of(tensor).length if tensor.data_location == onnx.TensorProto.EXTERNAL else None
        stored = (
            external if external is not None else len(tensor.raw_data) or count * _stored_itemsize(tensor.data_type)
        )
        if tensor.name in product_weights:
            products += count * (2 if precision == "bf16" else 4) if tensor.data_type in FLOAT_TYPES else stored
        else:
            held += count * 4 if tensor.data_type in FLOAT_TYPES else stored
    return OpenVinoGraphBytes(int(held + products), int(products))


def _stored_itemsize(data_type: int) -> float:
    if data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return 0.5
    return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize


def openvino_weight_placement(export_dir: Path, manifest: ExportManifest, precision: str = "bf16") -> WeightPlacement:
    """Every graph's weights as OpenVINO holds them once it has run (``openvino_graph_bytes``), none shared, and the
    largest first run's compiled copy."""
    per_graph = {
        name: openvino_graph_bytes(onnx.load(str(export_dir / graph.file), load_external_data=False), precision)
        for name, graph in manifest.graphs.items()
    }
    held = {name: found.held for name, found in per_graph.items()}
    first_run = max((found.first_run for found in per_graph.values()), default=0)
    return WeightPlacement(held, 0, sum(held.values()), "openvino", first_run)


def _tensor_key(tensor: ExternalTensor) -> tuple[str, int, int]:
    return tensor.location, tensor.offset, tensor.length


def graph_weight_placement(export_dir: Path, manifest: ExportManifest) -> WeightPlacement:
    """The shared layout's placement, worked out from the ONNX graphs as their engines are built
    (``luvc.engines.weight_inputs.engine_graph``): each graph's shareable weights once for all, the rest inside each
    engine."""
    graphs = manifest.graphs
    models = {name: onnx.load(str(export_dir / graph.file), load_external_data=False) for name, graph in graphs.items()}
    tables = external_initializers(models.values())
    per_engine, shared, totals = {}, {}, {}
    for name, graph in graphs.items():
        model = engine_graph(models[name], graph.kind, tables)
        tensors = shareable_weights(model)
        shared.update({_tensor_key(tensor): tensor.length for tensor in tensors})
        totals[name] = model_weight_bytes(model)
        per_engine[name] = totals[name] - sum(tensor.length for tensor in tensors)
    return WeightPlacement(per_engine, sum(shared.values()), sum(totals.values()), "onnx")


def engine_weight_placement(engines: EngineManifest) -> WeightPlacement:
    """The placement an engine folder records: its engines' sizes and, in the shared layout, the weight inputs once."""
    per_engine = {name: entry.bytes for name, entry in engines.engines.items()}
    shared = {_tensor_key(w): w.length for entry in engines.engines.values() for w in entry.weights}
    copies = sum(w.length for entry in engines.engines.values() for w in entry.weights)
    return WeightPlacement(per_engine, sum(shared.values()), sum(per_engine.values()) + copies, "engines")


def plan_memory(
    export_dir: str | Path,
    target: str,
    engines_dir: str | Path | None = None,
    cuda_graphs: bool = RUNTIME_REPLAY_BY_DEFAULT,
    openvino_precision: str | None = None,
) -> MemoryPlan:
    """The memory plan of ``export_dir`` (and its engines, when given) on ``target``, with the buffers of replayed CUDA
    graphs where ``cuda_graphs`` (default: what ``--cuda-graphs auto`` does, ``RUNTIME_REPLAY_BY_DEFAULT``);
    ``openvino_precision`` (``bf16`` or ``f32``): the plan of OpenVINO on a CPU host of ``target`` GiB instead."""
    dev = device(target)
    manifest = ExportManifest.load(export_dir, verify=False, engines_flags="--engines")
    graph_bytes = {name: graph_weight_bytes(Path(export_dir) / g.file) for name, g in manifest.graphs.items()}
    if openvino_precision is not None:
        if engines_dir is not None:
            critical("--engines are TensorRT's; plan OpenVINO without them (or drop --backend openvino).")
        dev = dataclasses.replace(dev, name=dev.name.replace("GPU", "CPU host", 1))
        weights = openvino_weight_placement(Path(export_dir), manifest, openvino_precision)
        cuda_graphs = False
    elif engines_dir is not None:
        from luvc.engines.manifest import EngineManifest

        engines = EngineManifest.load(engines_dir)
        engines.check_files(engines_dir, manifest, hashes=False)  # sizes as built, from this export: no hashing
        weights = engine_weight_placement(engines)
    else:
        weights = graph_weight_placement(Path(export_dir), manifest)
    max_batch = manifest.profile.max_batch
    workspace = get_target(dev.preset).workspace_bytes or DEFAULT_ACTIVATION_BYTES
    shapes = StaticShapes.of(manifest)
    replay = shapes.replay_buffer_bytes(MAX_BUFFER_BYTES, MAX_CAPTURED) if cuda_graphs else 0
    return MemoryPlan(
        device=dev,
        weights=weights,
        kv_bytes=kv_bytes(manifest, max_batch),
        kv_bytes_uncompressed=kv_bytes(manifest, max_batch, uncompressed=True),
        kv_bytes_per_row=kv_bytes(manifest, 1),
        max_batch=max_batch,
        activation_bytes=workspace,
        build_host_bytes=2 * max(graph_bytes.values()) + GiB,
        replay_bytes=replay,
        replay_shapes=shapes.count if cuda_graphs else 0,
        replay_bytes_per_row=replay // max_batch,
    )
