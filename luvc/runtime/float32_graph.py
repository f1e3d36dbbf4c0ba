"""An fp16 graph rewritten to compute in float32 on the CPU (``float32_compute``), optionally with float16's rounding
after every operation (parity's float16 arithmetic), for ``luvc.runtime.weights.MappedWeights``' sessions.

ONNX Runtime's CPU EP has float32 kernels only for most operations: given a float16 graph it inserts casts around
them and folds a float32 copy of every weight into each session. Rewritten here, the graph reads float32 weights that
``MappedWeights`` converts once for every session (and keeps in the start-up cache).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import numpy_helper

FLOAT16, FLOAT = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
# how a CPU session computes an fp16 export: as exported (ONNX Runtime converting as it needs), in float32, or in
# float32 with each value the graph computes in float16 rounded to float16 (``float32_compute``)
AS_EXPORTED, IN_FLOAT32, FLOAT16_ROUNDED = "as exported", "float32", "float32, rounded to float16"
COMPUTE_MODES = (AS_EXPORTED, IN_FLOAT32, FLOAT16_ROUNDED)

# ops whose outputs are some of their inputs' values (or constants), float16 values already where those are: nothing
# to round after them (``float32_compute``'s float16 rounding)
SELECTING_OPS = frozenset(
    {
        "Concat", "Constant", "Expand", "Flatten", "Gather", "GatherElements", "GatherND", "Identity", "Max", "Min",
        "Neg", "Abs", "Relu", "Pad", "ReduceMax", "ReduceMin", "Reshape", "ScatterElements", "ScatterND", "Slice",
        "Split", "Squeeze", "TensorScatter", "Tile", "TopK", "Transpose", "Unsqueeze", "Where",
    }
)  # fmt: skip
# ops that write a float16 cache input in place (the runtime binds input and output to one buffer): they stay float16,
# op type -> index of the input holding the values written
IN_PLACE_UPDATES = {"TensorScatter": 1, "ScatterElements": 2}


def has_float16(model: onnx.ModelProto) -> bool:
    """Whether ``model`` has a float16 input, output or initializer (an fp16 export's graph)."""
    values = itertools.chain(model.graph.input, model.graph.output)
    return any(value.type.tensor_type.elem_type == FLOAT16 for value in values) or any(
        tensor.data_type == FLOAT16 for tensor in model.graph.initializer
    )


def float32_compute(model: onnx.ModelProto, float16_rounding: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` that computes in float32 where it computed in float16, with the same inputs and outputs:
    float16 inputs are cast on entry and float16 outputs on exit, in-place cache updates (``IN_PLACE_UPDATES``) stay
    float16 on their cache, float16 initializers and constants become float32 (external ones keep their reference
    and must be given as float32 shared initializers). Value infos are dropped; ONNX Runtime infers them again.

    ``float16_rounding``: every value the graph computed in float16 is rounded to float16 (a Cast there and back
    after the node that makes it): float16 arithmetic, each operation's result in float16, as PyTorch's float16
    reference computes it (parity's), from float32 weights converted once for every session. ONNX Runtime's CPU EP
    running the float16 graph itself is no such thing: it folds a float32 copy of each weight into every session
    (parity's peak memory was about one float32 copy of the LLM above run's) and keeps a chain of operations it has
    no float16 kernels for in float32 between the casts it inserts."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    rewrite = _Float32Rewrite(graph, _float16_values(model) if float16_rounding else set())
    for node in graph.node:
        rewrite.add(node)
    nodes = rewrite.finished()
    for tensor in graph.initializer:
        _tensor_to_float32(tensor)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return model


class _Float32Rewrite:
    """The nodes of ``float32_compute``'s graph, in order, with the casts it adds at the float16 inputs, outputs and
    in-place cache updates."""

    def __init__(self, graph: onnx.GraphProto, rounded: set[str] | None = None) -> None:
        self.rounded = rounded or set()  # values computed in float16 whose readers see them rounded to float16
        self.float16_inputs = {value.name for value in graph.input if value.type.tensor_type.elem_type == FLOAT16}
        self.float16_outputs = {value.name for value in graph.output if value.type.tensor_type.elem_type == FLOAT16}
        self.names = _UniqueNames(graph)
        self.renamed: dict[str, str] = {}  # a float16 tensor -> its float32 cast, for the nodes after the cast
        self.computed: dict[str, str] = {}  # a float16 graph output -> the float32 tensor its producer now writes
        self.nodes: list[onnx.NodeProto] = []
        for name in sorted(self.float16_inputs):
            self.renamed[name] = self.cast(name, FLOAT)

    def cast(self, source: str, to: int) -> str:
        """Add a cast of ``source`` to ``to``; returns the cast tensor's name."""
        target = self.names.new(f"{source}/{'float32' if to == FLOAT else 'float16'}")
        self.nodes.append(
            onnx.helper.make_node("Cast", [source], [target], to=to, name=self.names.new(f"{target}/Cast"))
        )
        return target

    def add(self, node: onnx.NodeProto) -> None:
        """Add ``node`` (changed in place), reading the float32 casts, with its float16 cache or outputs cast."""
        _attributes_to_float32(node)
        updates = IN_PLACE_UPDATES.get(node.op_type)
        in_place = updates is not None and node.input[0] in self.float16_inputs
        for index, name in enumerate(node.input):
            if name in self.renamed and not (in_place and index == 0):  # the float16 cache itself stays
                node.input[index] = self.renamed[name]
        if in_place:
            node.input[updates] = self.cast(node.input[updates], FLOAT16)
        self.nodes.append(node)
        if in_place:  # the updated cache stays float16 (a graph output, read in place); the nodes after read a cast
            for output in node.output:
                self.renamed[output] = self.cast(output, FLOAT)
            return
        for position, output in enumerate(node.output):
            if output in self.float16_outputs:
                self.computed[output] = self.renamed[output] = self.names.new(f"{output}/float32")
                node.output[position] = self.computed[output]
            if output in self.rounded and node.op_type not in SELECTING_OPS:
                self.renamed[output] = self.cast(self.cast(self.renamed.get(output, output), FLOAT16), FLOAT)

    def finished(self) -> list[onnx.NodeProto]:
        """The nodes, with the casts of the float16 graph outputs at the end."""
        for name, source in self.computed.items():
            cast = onnx.helper.make_node("Cast", [source], [name], to=FLOAT16, name=self.names.new(f"{name}/Cast"))
            self.nodes.append(cast)
        return self.nodes


def _float16_values(model: onnx.ModelProto) -> set[str]:
    """The names of the values ``model``'s nodes compute in float16 (by ONNX's type inference; its initializers'
    data is not read)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = itertools.chain(inferred.graph.value_info, inferred.graph.output)
    return {value.name for value in values if value.type.tensor_type.elem_type == FLOAT16}


def _attributes_to_float32(node: onnx.NodeProto) -> None:
    for attribute in node.attribute:
        if node.op_type == "Cast" and attribute.name == "to" and attribute.i == FLOAT16:
            attribute.i = FLOAT
        elif attribute.type == onnx.AttributeProto.TENSOR:
            _tensor_to_float32(attribute.t)
        elif attribute.type == onnx.AttributeProto.TENSORS:
            for tensor in attribute.tensors:
                _tensor_to_float32(tensor)


def _tensor_to_float32(tensor: onnx.TensorProto) -> None:
    """Retype a float16 tensor to float32 in place: inline data is converted, external data keeps its reference."""
    if tensor.data_type != FLOAT16:
        return
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        tensor.data_type = FLOAT
        return
    converted = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)
    tensor.CopyFrom(converted)


class _UniqueNames:
    """Names not used by any value or node of ``graph``."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.used = {value.name for value in itertools.chain(graph.input, graph.output, graph.initializer)}
        for node in graph.node:
            self.used.update(node.input)
            self.used.update(node.output)
            self.used.add(node.name)

    def new(self, base: str) -> str:
        name, suffix = base, 1
        while name in self.used:
            suffix += 1
            name = f"{base}_{suffix}"
        self.used.add(name)
        return name
