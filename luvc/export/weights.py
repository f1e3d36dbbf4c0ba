"""``SharedWeights``: one external-data file for all the graphs of an export, each distinct tensor written once.

The prefill graph of every image-size bucket and the decode graph all carry the same LLM weights; saved one
external-data file per graph they would be on disk once per graph (three copies of a 3 GB LLM for two buckets).
Here every graph that keeps its weights outside the protobuf points into one ``weights.data``: a tensor whose bytes
are already in the file is referenced at its offset instead of written again. ONNX Runtime and TensorRT's ONNX
parser read such a graph by path like any other external-data graph (location, offset and length per tensor).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx.external_data_helper import _get_all_tensors, set_external_data

WEIGHTS_FILE = "weights.data"
ALIGNMENT = 4096  # tensors start on page boundaries, so readers can memory-map them
SIZE_THRESHOLD = 1024  # smaller tensors (shapes, scalars) stay inside the graph, which then opens without its folder


class SharedWeights:
    """Appends the tensors of the graphs it is given to ``folder / name``; identical bytes are stored once."""

    def __init__(self, folder: Path, name: str | None = None) -> None:
        self.path = Path(folder) / (name or WEIGHTS_FILE)
        self.offsets: dict[bytes, tuple[int, int]] = {}  # digest of the bytes -> (offset, length)
        self.referenced_bytes = 0  # what the graphs reference (with repeats): the size without sharing

    @property
    def written_bytes(self) -> int:
        """The tensor bytes the file holds (without alignment padding): each distinct tensor once."""
        return sum(length for _, length in self.offsets.values())

    def externalize(self, model: onnx.ModelProto) -> None:
        """Move every tensor of ``model`` of at least ``SIZE_THRESHOLD`` bytes to the shared file (in place)."""
        with self.path.open("ab") as file:
            for tensor in _get_all_tensors(model):
                if not tensor.HasField("raw_data"):  # typed fields (float_data ...): raw bytes first
                    if tensor.data_location == onnx.TensorProto.EXTERNAL:
                        continue
                    tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor), tensor.name))
                data = tensor.raw_data
                if len(data) < SIZE_THRESHOLD:
                    continue
                digest = hashlib.blake2b(data, digest_size=32).digest()
                if digest not in self.offsets:
                    offset = -(-file.tell() // ALIGNMENT) * ALIGNMENT
                    file.write(b"\0" * (offset - file.tell()))
                    file.write(data)
                    self.offsets[digest] = (offset, len(data))
                self.referenced_bytes += len(data)
                offset, length = self.offsets[digest]
                set_external_data(tensor, self.path.name, offset, length)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                tensor.ClearField("raw_data")
