"""An export's ONNX graphs as OpenVINO models: read by OpenVINO's ONNX frontend, the in-place KV write converted, and
the weight products computed in the precision the CPU is fastest at.

- **The KV write.** The decode graph writes each step's keys and values into the cache with ONNX's ``TensorScatter``
  (opset 24), which OpenVINO's frontend does not convert. ``read_model`` registers a conversion for it: the same
  write as a ``ScatterElementsUpdate`` whose indices are each row's write index plus the update's positions along
  the sequence axis. The export is unchanged; ONNX Runtime and TensorRT still read ``TensorScatter``.
- **bf16 products.** OpenVINO's CPU plugin runs a graph's matrix products in bf16 when asked
  (``INFERENCE_PRECISION_HINT``), except those it keeps in f32 for accuracy: everything upstream of a graph output
  reached through no product, and here everything upstream of SPU's ranking, which reads the residual stream of every
  earlier layer. On a Qwen2-VL-2B-width prefill that kept 47 of 62 products in f32 and made bf16 gain 1.1x.
  ``bfloat16_products`` writes the precision into the model instead: every product of an activation and a float
  weight converts both to bf16 and its result back, so it runs on the AMX/AVX-512 BF16 kernels whatever the
  heuristics decide; everything else (norms, softmax, SPU's scores after the products) stays in f32.
- **Precision by the hardware** (``choose_precision``): bf16 where OpenVINO's CPU plugin has bf16 kernels (AMX or
  AVX-512 BF16), f32 elsewhere; where it has f16 kernels too (AVX-512 FP16), an fp16 export's decode step computes in
  f16 (``float16_decode_faster``).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from luvc.errors import critical

PRECISIONS = ("auto", "bf16", "f32")  # --openvino-precision
# the CPU flags that give OpenVINO's CPU plugin bf16 matrix kernels, most capable first (``/proc/cpuinfo`` names)
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# the CPU flags that give it f16 matrix kernels, most capable first
FP16_FLAGS = ("amx_fp16", "avx512_fp16")


@dataclasses.dataclass(frozen=True)
class OpenVinoPrecision:
    """The precision OpenVINO computes an export's float products in (``bf16`` or ``f32``) and why, in words."""

    precision: str
    reason: str
    # an fp16 export's decode step computes in f16 instead (``float16_decode_faster``): chosen, not asked, on a CPU
    # with f16 kernels
    float16_decode: bool = False

    def __str__(self) -> str:
        return f"{self.precision} ({self.reason})"


# how long the import waits for OpenVINO's telemetry thread to end (it ends when its one send does)
TELEMETRY_JOIN_S = 2.0


def import_openvino():
    """The ``openvino`` module (its telemetry thread released: ``release_telemetry_thread``), or one line saying how to
    install it."""
    try:
        import openvino
    except ImportError:
        critical(
            f"--backend openvino needs OpenVINO; run `{sys.executable} -m pip install 'luvc-export[openvino]'` "
            "(or use --backend ort)."
        )
    release_telemetry_thread()
    return openvino


def release_telemetry_thread() -> None:
    """``import openvino`` hands a usage event to a thread pool of ``openvino_telemetry``'s, whose worker then stays
    alive, idle; a process with such a thread refuses to fork the exporter's graph workers
    (``luvc.export.graph_workers``). Shut that pool down: the event already handed over is still sent (whether
    telemetry is sent at all stays the user's setting, ``opt_in_out --opt_out``), later ones are dropped, and the
    worker ends with its send (waited for up to ``TELEMETRY_JOIN_S``)."""
    telemetry = getattr(sys.modules.get("openvino.tools.ovc"), "telemetry", None)
    executor = getattr(getattr(telemetry, "sender", None), "executor", None)
    if executor is None:
        return
    workers = list(getattr(executor, "_threads", ()))
    executor.shutdown(wait=False)
    for worker in workers:
        worker.join(TELEMETRY_JOIN_S)


def cpu_flags() -> set[str]:
    """This CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def choose_precision(core, requested: str = "auto") -> OpenVinoPrecision:
    """The precision for ``requested`` (``auto``, ``bf16`` or ``f32``) on this CPU: ``auto`` is bf16 where
    OpenVINO's CPU plugin lists bf16 kernels, else f32; ``bf16`` where it has none is refused."""
    if requested not in PRECISIONS:
        critical(f"OpenVINO precision {requested!r} is not one of {list(PRECISIONS)} (--openvino-precision).")
    capable = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    flags = sorted(cpu_flags() & set(BF16_FLAGS))
    if requested == "f32":
        return OpenVinoPrecision("f32", "as asked")
    if requested == "bf16" and not capable:
        critical("This CPU has no bf16 kernels in OpenVINO (no AMX or AVX-512 BF16); use --openvino-precision f32.")
    if capable:
        why = "as asked" if requested == "bf16" else f"the CPU has {', '.join(flags) or 'bf16 kernels'}"
        return OpenVinoPrecision("bf16", why, float16_decode=requested == "auto" and float16_kernels(core))
    return OpenVinoPrecision("f32", "the CPU has no AMX or AVX-512 BF16")


def float16_kernels(core) -> bool:
    """Whether OpenVINO's CPU plugin has f16 matrix kernels here: it lists FP16 and the CPU has AMX-FP16 or AVX-512
    FP16 (the plugin may list FP16 where it only converts)."""
    return "FP16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") and bool(cpu_flags() & set(FP16_FLAGS))


def tensor_scatter(node) -> list:
    """OpenVINO conversion of ONNX ``TensorScatter`` (mode ``linear``): ``update`` written into ``past_cache`` along
    ``axis`` from each row's ``write_indices`` on (0 where not given), as a ``ScatterElementsUpdate``."""
    import openvino.opset15 as ops

    past, update = node.get_input(0), node.get_input(1)
    mode = node.get_attribute("mode") if node.has_attribute("mode") else "linear"
    if mode != "linear":
        raise ValueError(f"TensorScatter mode {mode!r}: only 'linear' is converted")
    rank = past.get_partial_shape().rank.get_length()
    axis = (node.get_attribute("axis") if node.has_attribute("axis") else -2) % rank
    update_shape = ops.shape_of(update, "i64")
    length = ops.gather(update_shape, ops.constant(np.int64(axis)), ops.constant(np.int64(0)))
    positions = ops.range(ops.constant(np.int64(0)), length, ops.constant(np.int64(1)), "i64")
    along_axis = [1] * axis + [-1] + [1] * (rank - axis - 1)
    positions = ops.reshape(positions, ops.constant(np.array(along_axis, np.int64)), False)
    if node.get_input_size() > 2:
        rows = ops.convert(node.get_input(2), "i64")
        rows = ops.reshape(rows, ops.constant(np.array([-1] + [1] * (rank - 1), np.int64)), False)
        positions = ops.add(rows, positions)
    indices = ops.broadcast(positions, update_shape)
    return [ops.scatter_elements_update(past, indices, update, ops.constant(np.int64(axis))).output(0)]


def new_core():
    """An OpenVINO ``Core`` that converts ``TensorScatter`` (compiled models are cached per compile:
    ``OpenVinoRuntime``)."""
    ov = import_openvino()
    from openvino.frontend.onnx import ConversionExtension

    core = ov.Core()
    core.add_extension(ConversionExtension("TensorScatter", tensor_scatter))
    return core


def _float_weight_type(node) -> str | None:
    """The element type of ``node`` where it is a constant float weight, or a constant converted to float (a float16
    weight widened); None otherwise."""
    if node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    element = node.get_output_element_type(0)
    return element.get_type_name() if node.get_type_name() == "Constant" and element.is_real() else None


def _float_weight(node) -> bool:
    """Whether ``node`` is a constant float weight, or a constant converted to float."""
    return _float_weight_type(node) is not None


def bfloat16_products(model) -> int:
    """Make every ``MatMul`` of ``model`` whose second input is a constant float weight compute in bf16 (both inputs
    converted, the result converted back to its type); returns how many were changed. Products of quantized weights
    (a ``DequantizeLinear`` before them) are left to OpenVINO's compressed-weight kernels."""
    import openvino.opset15 as ops

    changed = 0
    for product in model.get_ordered_ops():
        if product.get_type_name() != "MatMul" or not _float_weight(product.input_value(1).get_node()):
            continue
        attributes = product.get_attributes()
        activations = ops.convert(product.input_value(0), "bf16")
        weight = ops.convert(product.input_value(1), "bf16")
        result = ops.matmul(activations, weight, attributes["transpose_a"], attributes["transpose_b"])
        widened = ops.convert(result, product.get_output_element_type(0))
        widened.set_friendly_name(product.get_friendly_name())
        for reader in list(product.output(0).get_target_inputs()):
            reader.replace_source_output(widened.output(0))
        changed += 1
    if changed:
        model.validate_nodes_and_infer_types()
    return changed


QUANTIZED_WEIGHT_TYPES = frozenset({"i8", "u8", "i4", "u4"})  # OpenVINO's names of a compressed weight's elements
EIGHT_BIT_TYPES = frozenset({"i8", "u8"})


def _quantized_weight_type(node, depth: int = 6) -> str | None:
    """The element type of the integer constant ``node`` is computed from, where it is computed from constants alone
    (a weight-only INT8/INT4 weight as OpenVINO's frontend converts ``DequantizeLinear``: Convert, Subtract, Multiply,
    Reshape of constants); None otherwise."""
    kind = node.get_type_name()
    if kind == "Constant":
        element = node.get_output_element_type(0).get_type_name()
        return element if element in QUANTIZED_WEIGHT_TYPES else None
    if depth == 0 or kind == "Parameter" or node.get_input_size() == 0:
        return None
    found = None
    for value in node.input_values():
        source = value.get_node()
        element = _quantized_weight_type(source, depth - 1)
        if element is None and not _constants_only(source, depth - 1):
            return None
        found = found or element
    return found


def _constants_only(node, depth: int) -> bool:
    if node.get_type_name() == "Constant":
        return True
    if depth == 0 or node.get_type_name() == "Parameter" or node.get_input_size() == 0:
        return False
    return all(_constants_only(value.get_node(), depth - 1) for value in node.input_values())


def _quantized_activation(node, depth: int = 5) -> bool:
    """Whether ``node`` dequantizes a quantized activation (a Q/DQ pair, which the frontend makes a FakeQuantize)."""
    if node.get_type_name() == "FakeQuantize":
        return True
    if depth == 0 or node.get_type_name() not in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose"):
        return False
    return any(_quantized_activation(value.get_node(), depth - 1) for value in node.input_values())


def weight_only_products(model) -> list[str]:
    """The weight element type of each product of ``model`` that multiplies a float activation by a weight-only
    INT8/INT4 weight (not a Q/DQ INT8 export's products, whose activations are quantized too)."""
    found = []
    for product in model.get_ordered_ops():
        if product.get_type_name() != "MatMul":
            continue
        weight_type = _quantized_weight_type(product.input_value(1).get_node())
        if weight_type is not None and not _quantized_activation(product.input_value(0).get_node()):
            found.append(weight_type)
    return found


def integer_kernels_faster(model, decode_step: bool) -> bool:
    """Whether ``model``'s weight-only products run faster under OpenVINO's f32 hint, where they quantize their
    activations and run on integer kernels, than under bf16, where they decompress their weights to bf16 (its float
    products stay bf16 either way: ``bfloat16_products``). Measured at Qwen2-VL-2B widths (8 layers) on an Intel Xeon
    with AMX, 2026-11-28: a decode step (``decode_step``) always (int8w 21.8-22.7 against 12.8-16.6 tokens/s, INT4
    22.1-24.5 against 16.1-18.5; ONNX Runtime's 20.4 and 26.0), a prefill of 8-bit weights (int8w 176-179 against
    193-216 ms), not of INT4 ones (470-480 against 310-336 ms)."""
    weight_types = weight_only_products(model)
    return bool(weight_types) and (decode_step or all(kind in EIGHT_BIT_TYPES for kind in weight_types))


def float16_decode_faster(model, decode_step: bool) -> bool:
    """Whether ``model`` is a decode step (``decode_step``) whose products all multiply by float16 weights (an fp16
    export's), which OpenVINO's f16 hint runs faster than bf16 products on a CPU with AVX-512 FP16: a step reads every
    weight once for one row of activations, and the f16 kernels read them faster. Measured at Qwen2-VL-2B widths (8
    layers, fp16 export) on an Intel Xeon with AMX and AVX-512 FP16, 2026-11-29: the decode graph alone 83.7-93.7 ms
    a step against 102.4-107.7 in bf16 (medians of 3 runs taking turns); a whole request's decode 10.45-10.76 tokens/s
    against 8.83-10.08 (ONNX Runtime's 8.3-9.3). A prefill or vision graph stays bf16, whose products AMX runs
    faster."""
    if not decode_step:
        return False
    weights = [
        _float_weight_type(product.input_value(1).get_node())
        for product in model.get_ordered_ops()
        if product.get_type_name() == "MatMul"
    ]
    float_weights = {kind for kind in weights if kind is not None}
    return float_weights == {"f16"} and not weight_only_products(model)
