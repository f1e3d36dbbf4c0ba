"""Replace TopK with k above TensorRT's 3840 by an equivalent built from TopK calls that TensorRT accepts.

Pattern: ``TopK(x, k, axis=-1, sorted=0)`` with constant ``k > 3840`` over a static last axis of ``n`` where the
dropped part ``n - k <= 3840`` (SPU budgets keep most tokens when they are large). Emits: ``TopK`` of the ``n - k``
dropped elements (opposite direction) -> keep mask (``ScatterElements``) -> kept positions in ascending order
(``CumSum`` and a ``ScatterElements`` permutation that puts them first) -> values by ``GatherElements``. The kept set
is the same (ties aside); an unsorted TopK may return it in any order, and ascending is the order SPU sorts into,
so an ascending ``TopK`` re-sort of these indices (SPU's next node) is bypassed too.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from luvc.export.lint import TOPK_LIMIT


def _i64(value) -> np.ndarray:
    return np.asarray(value, dtype=np.int64)


def _rewrite(graph: gs.Graph, node: gs.Node, k: int, n: int) -> gs.Variable:
    """Emit the replacement of ``node`` (outputs rebound to it); return the ascending kept-index tensor."""
    p, x = node.name, node.inputs[0]
    last = len(x.shape) - 1
    values, indices = node.outputs
    node.outputs = []

    def layer(op, name, inputs, dtype=np.int64, attrs=None, outputs=None):
        outputs = outputs or [gs.Variable(f"{p}/{name}/output_0", dtype=dtype)]
        return graph.layer(op=op, name=f"{p}/{name}", inputs=inputs, outputs=outputs, attrs=attrs or {})[0]

    largest = node.attrs.get("largest", 1)
    dropped = graph.layer(
        op="TopK",
        name=f"{p}/Dropped",
        inputs=[x, _i64([n - k])],
        outputs=[gs.Variable(f"{p}/Dropped/output_0", dtype=x.dtype), gs.Variable(f"{p}/Dropped/output_1", np.int64)],
        attrs={"axis": -1, "largest": 1 - largest, "sorted": 0},
    )[1]
    shape = layer("Shape", "Shape", [x])
    one, zero = gs.Constant(f"{p}/one", _i64([1])), gs.Constant(f"{p}/zero", _i64([0]))  # tensor attributes
    ones = layer("ConstantOfShape", "Ones", [shape], attrs={"value": one})
    zeros = layer("ConstantOfShape", "Zeros", [layer("Shape", "DroppedShape", [dropped])], attrs={"value": zero})
    keep = layer("ScatterElements", "KeepMask", [ones, dropped, zeros], attrs={"axis": last})
    slot = layer("Sub", "Slot", [layer("CumSum", "CumSum", [keep, _i64(last)]), _i64(1)])
    dropped_count = layer("CumSum", "DroppedCumSum", [layer("Sub", "NotKept", [_i64(1), keep]), _i64(last)])
    spare = layer("Add", "SpareSlot", [dropped_count, _i64(k - 1)])  # dropped positions fill slots k .. n - 1
    is_kept = layer("Cast", "IsKept", [keep], dtype=np.bool_, attrs={"to": onnx.TensorProto.BOOL})
    target = layer("Where", "Target", [is_kept, slot, spare])  # a permutation of 0 .. n - 1: no duplicate writes
    positions = layer("Expand", "Positions", [layer("Range", "Range", [_i64(0), _i64(n), _i64(1)]), shape])
    slots = layer("ConstantOfShape", "Slots", [shape], attrs={"value": zero})
    compact = layer("ScatterElements", "Compact", [slots, target, positions], attrs={"axis": last})
    kept = layer("Slice", "Kept", [compact, _i64([0]), _i64([k]), _i64([last])])
    graph.layer(op="GatherElements", name=f"{p}/Values", inputs=[x, kept], outputs=[values], attrs={"axis": last})
    for consumer in list(indices.outputs):
        resorts = (
            consumer.op == "TopK"
            and consumer.inputs[0] is indices
            and not consumer.attrs.get("largest", 1)
            and isinstance(consumer.inputs[1], gs.Constant)
            and int(np.max(consumer.inputs[1].values)) == k
            and not consumer.outputs[1].outputs
            and consumer.outputs[1] not in graph.outputs
        )
        if resorts:  # an ascending re-sort of indices that are already ascending
            out = consumer.outputs[0]
            consumer.outputs = []
            graph.layer(op="Identity", name=f"{consumer.name}/Sorted", inputs=[kept], outputs=[out])
        else:
            consumer.inputs = [kept if tensor is indices else tensor for tensor in consumer.inputs]
    if indices in graph.outputs:
        graph.layer(op="Identity", name=f"{p}/Indices", inputs=[kept], outputs=[indices])
    return kept


def split_large_topk(graph: gs.Graph) -> gs.Graph:
    """Rewrite each matching TopK with k > 3840 (see the module docstring)."""
    for node in [n for n in graph.nodes if n.op == "TopK"]:
        x, k_tensor = node.inputs
        if not isinstance(k_tensor, gs.Constant) or x.shape is None or not isinstance(x.shape[-1], int):
            continue
        k, n = int(np.max(k_tensor.values)), x.shape[-1]
        on_last_axis = node.attrs.get("axis", -1) in (-1, len(x.shape) - 1)
        if k > TOPK_LIMIT and n - k <= TOPK_LIMIT and not node.attrs.get("sorted", 1) and on_last_axis:
            _rewrite(graph, node, k, n)
    return graph.cleanup().toposort()
