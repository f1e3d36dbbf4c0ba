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
from onnx.external_data_helper import _get_all_tensors

from luvc.export.manifest import ExternalTensor

WEIGHTS_FILE = "weights.data"
ALIGNMENT = 4096  # tensors start on page boundaries, so readers can memory-map them
SIZE_THRESHOLD = 1024  # smaller tensors (shapes, scalars) stay inside the graph, which then opens without its folder
CHUNK_BYTES = 16 << 20  # tensors copied from another external file move in chunks of this size


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

    def externalize(self, model: onnx.ModelProto, source: Path | None = None) -> None:
        """Move every tensor of ``model`` of at least ``SIZE_THRESHOLD`` bytes to the shared file (in place). Tensors
        whose data is in another external file are read from ``source`` (their folder) one at a time; without
        ``source`` they are left where they are."""
        with self.path.open("ab") as file:
            for tensor in _get_all_tensors(model):
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    if source is None:
                        continue
                    offset, length = self._append_external(file, tensor, Path(source))
                else:
                    if not tensor.HasField("raw_data"):  # typed fields (float_data ...): raw bytes first
                        tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor), tensor.name))
                    data = tensor.raw_data
                    if len(data) < SIZE_THRESHOLD:
                        continue
                    digest = hashlib.blake2b(data, digest_size=32).digest()
                    if digest not in self.offsets:
                        start = _pad(file)
                        file.write(data)
                        self.offsets[digest] = (start, len(data))
                    offset, length = self.offsets[digest]
                self.referenced_bytes += length
                del tensor.external_data[:]
                for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
                tensor.data_location = onnx.TensorProto.EXTERNAL
                tensor.ClearField("raw_data")

    def _append_external(self, file, tensor: onnx.TensorProto, folder: Path) -> tuple[int, int]:
        """Copy an external tensor's bytes from ``folder`` in chunks, hashing as it goes; a tensor already in the
        file is cut off again and referenced at its first offset. Returns ``(offset, length)``."""
        source = ExternalTensor.of(tensor)
        before = file.tell()
        start, hasher = _pad(file), hashlib.blake2b(digest_size=32)
        with open(folder / source.location, "rb") as handle:
            handle.seek(source.offset)
            remaining = source.length
            while remaining:
                chunk = handle.read(min(CHUNK_BYTES, remaining))
                if not chunk:
                    raise OSError(f"{source.location} ends before tensor {tensor.name}'s data")
                hasher.update(chunk)
                file.write(chunk)
                remaining -= len(chunk)
        digest = hasher.digest()
        if digest in self.offsets:
            file.truncate(before)
            file.seek(before)  # truncate leaves the buffered position where the write ended
            return self.offsets[digest]
        self.offsets[digest] = (start, source.length)
        return self.offsets[digest]


def _pad(file) -> int:
    """Pad ``file`` to the next ``ALIGNMENT`` boundary; returns that offset."""
    offset = -(-file.tell() // ALIGNMENT) * ALIGNMENT
    file.write(b"\0" * (offset - file.tell()))
    return offset
