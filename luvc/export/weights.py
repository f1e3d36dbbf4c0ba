"""``SharedWeights``: one external-data file for all the graphs of an export, each distinct tensor written once.

The prefill graph of every image-size bucket and the decode graph all carry the same LLM weights; saved one
external-data file per graph they would be on disk once per graph (three copies of a 3 GB LLM for two buckets).
Here every graph that keeps its weights outside the protobuf points into one ``weights.data``: a tensor whose bytes
are already in the file is referenced at its offset instead of written again. ONNX Runtime and TensorRT's ONNX
parser read such a graph by path like any other external-data graph (location, offset and length per tensor).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnx.external_data_helper import _get_all_tensors

from luvc.export.manifest import WEIGHTS_FILE, ExternalTensor

ALIGNMENT = 4096  # tensors start on page boundaries, so readers can memory-map them
SIZE_THRESHOLD = 1024  # smaller tensors (shapes, scalars) stay inside the graph, which then opens without its folder
CHUNK_BYTES = 16 << 20  # tensors copied from another external file move in chunks of this size


@dataclasses.dataclass(frozen=True)
class WeightsPart:
    """What a graph worker's ``SharedWeights`` leaves for the exporter to take into the export's file: the part file,
    where each digest's bytes are in it, every tensor in the order the export's file takes them (``("bytes",
    digest)`` in the part, ``("view", key)`` of the model's memory, which the worker left to the exporter), and the
    location its graph gives those views."""

    file: str
    offsets: dict[bytes, tuple[int, int]]
    order: tuple[tuple[str, bytes | tuple], ...]
    deferred_location: str


class SharedWeights:
    """Appends the tensors of the graphs it is given to ``folder / name``; identical bytes are stored once.

    With ``defer_views`` (a graph worker's part file), a tensor that views the model's memory is not written: the
    graph points at a placeholder (``deferred_location``, offset = its number) and the exporter, which holds the same
    memory, writes it into the export's file once, however many graphs hold it (``absorb``)."""

    def __init__(self, folder: Path, name: str | None = None, defer_views: bool = False) -> None:
        self.path = Path(folder) / (name or WEIGHTS_FILE)
        self.offsets: dict[bytes, tuple[int, int]] = {}  # digest of the bytes -> (offset, length)
        self.views: dict[tuple, tuple[int, int]] = {}  # a view of stable memory (StableMemory.key) -> (offset, length)
        self.defer_views = defer_views
        self.deferred_location = f"{self.path.name}.views"
        self.deferred: list[np.ndarray] = []  # placeholder number -> the view it stands for
        self._deferred_numbers: dict[tuple, int] = {}
        self.order: list[tuple[str, bytes | tuple]] = []  # with defer_views: what was appended or deferred, in order
        # of every byte appended: None once the file is cut back, or when it did not start empty
        started = not self.path.exists() or self.path.stat().st_size == 0
        self._file_digest: hashlib._Hash | None = hashlib.sha256() if started else None
        self.referenced_bytes = 0  # what the graphs reference (with repeats): the size without sharing

    def sha256(self) -> str | None:
        """The sha256 of the file as written so far, without reading it back; ``None`` when the file was cut back
        (a duplicate copied in, ``_append_external``) or existed before."""
        return None if self._file_digest is None else self._file_digest.hexdigest()

    def _write(self, file, data) -> None:
        file.write(data)
        if self._file_digest is not None:
            self._file_digest.update(data)

    @property
    def written_bytes(self) -> int:
        """The tensor bytes the file holds (without alignment padding): each distinct tensor once."""
        return sum(length for _, length in self.offsets.values())

    def stream(self, model: ir.Model, min_bytes: int, stable: StableMemory | None = None) -> onnx.ModelProto:
        """``model`` (a traced graph in ONNX IR) as a ``ModelProto`` whose initializers of at least ``min_bytes`` are in
        the shared file: each is written from memory as it is (a weight, or a folded copy such as a transposed weight,
        computed when read), once per distinct bytes, and never held as protobuf bytes. Smaller ones stay inline.
        A tensor that views ``stable`` memory (the model's parameters, unchanged while the export runs) is placed by
        its address: the next graph that holds the same view is neither copied nor hashed again."""
        with self.path.open("ab") as file:
            for value in model.graph.initializers.values():
                tensor = value.const_value
                if tensor is None or tensor.nbytes < min_bytes:
                    continue
                array = tensor.numpy()
                view = stable.key(array) if stable is not None else None
                if view is not None and self.defer_views:
                    self.referenced_bytes += array.nbytes
                    value.const_value = ir.ExternalTensor(
                        self.deferred_location,
                        self._defer(view, array),
                        array.nbytes,
                        tensor.dtype,
                        shape=ir.Shape(array.shape),
                        name=_initializer_name(value),
                    )
                    continue
                placed = self.views.get(view) if view is not None else None
                if placed is None:
                    data = _bytes_of(array)
                    placed = self._append(file, data, hashlib.sha256(data).digest())
                    if view is not None:
                        self.views[view] = placed
                offset, length = placed
                self.referenced_bytes += length
                value.const_value = ir.ExternalTensor(
                    self.path.name,
                    offset,
                    length,
                    tensor.dtype,
                    shape=ir.Shape(array.shape),
                    name=_initializer_name(value),
                )
        return ir.serde.serialize_model(model)

    def _defer(self, view: tuple, array: np.ndarray) -> int:
        """The placeholder number of the view ``view`` of stable memory (``array``), numbered as first seen."""
        number = self._deferred_numbers.get(view)
        if number is None:
            number = self._deferred_numbers[view] = len(self.deferred)
            self.deferred.append(array)
            self.order.append(("view", view))
        return number

    def part(self) -> WeightsPart:
        """What the exporter needs to take this worker's file in (``absorb``)."""
        return WeightsPart(self.path.name, dict(self.offsets), tuple(self.order), self.deferred_location)

    def deferred_view(self, tensor: onnx.TensorProto) -> np.ndarray | None:
        """The view of the model's memory ``tensor`` is a placeholder for (``defer_views``), or ``None``."""
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            return None
        stored = ExternalTensor.of(tensor)
        return self.deferred[stored.offset] if stored.location == self.deferred_location else None

    def array(self, tensor: onnx.TensorProto, folder: Path) -> np.ndarray:
        """The value of ``tensor``: a deferred view from memory, any other tensor from its bytes (external ones
        relative to ``folder``)."""
        view = self.deferred_view(tensor)
        return view if view is not None else onnx.numpy_helper.to_array(tensor, str(folder))

    def _pad(self, file) -> int:
        """Pad ``file`` to the next ``ALIGNMENT`` boundary; returns that offset."""
        offset = -(-file.tell() // ALIGNMENT) * ALIGNMENT
        self._write(file, b"\0" * (offset - file.tell()))
        return offset

    def _append(self, file, data: memoryview, digest: bytes) -> tuple[int, int]:
        """Write ``data`` (whose digest is ``digest``) unless the file holds those bytes; returns where they are."""
        if digest not in self.offsets:
            start = self._pad(file)
            self._write(file, data)
            self.offsets[digest] = (start, len(data))
            if self.defer_views:
                self.order.append(("bytes", digest))
        return self.offsets[digest]

    def place(self, tensor: onnx.TensorProto, value: np.ndarray) -> None:
        """Store ``value`` (of ``tensor``'s type and shape) as ``tensor``'s data, in place: appended unless the file
        holds its bytes, and ``tensor`` pointed at them."""
        data = _bytes_of(value)
        with self.path.open("ab") as file:
            offset, length = self._append(file, data, hashlib.sha256(data).digest())
        self.referenced_bytes += length
        _point_at(tensor, self.path.name, offset, length)

    def copy_external(self, tensor: onnx.TensorProto, folder: Path) -> None:
        """Copy external ``tensor``'s bytes from its file in ``folder`` in chunks, unless this file holds them, and
        point ``tensor`` here (in place): for a source file of the same name as this one, which ``externalize`` takes
        as streamed here."""
        with self.path.open("ab") as file:
            offset, length = self._append_external(file, tensor, Path(folder))
        self.referenced_bytes += length
        _point_at(tensor, self.path.name, offset, length)

    def externalize(self, model: onnx.ModelProto, source: Path | None = None) -> None:
        """Move every tensor of ``model`` of at least ``SIZE_THRESHOLD`` bytes to the shared file (in place). Tensors
        whose data is in another external file are read from ``source`` (their folder) one at a time; without
        ``source`` they are left where they are."""
        with self.path.open("ab") as file:
            for tensor in _get_all_tensors(model):
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    stored = ExternalTensor.of(tensor)
                    if stored.location == self.path.name:  # streamed here while tracing (``stream``)
                        self.referenced_bytes += stored.length
                        continue
                    if source is None or stored.location == self.deferred_location:
                        continue
                    offset, length = self._append_external(file, tensor, Path(source))
                else:
                    if not tensor.HasField("raw_data"):  # typed fields (float_data ...): raw bytes first
                        tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor), tensor.name))
                    data = tensor.raw_data
                    if len(data) < SIZE_THRESHOLD:
                        continue
                    digest = hashlib.sha256(data).digest()
                    offset, length = self._append(file, memoryview(data), digest)
                self.referenced_bytes += length
                _point_at(tensor, self.path.name, offset, length)

    def absorb(self, model: onnx.ModelProto, part: WeightsPart, folder: Path, stable: StableMemory) -> None:
        """Take in ``part``, the file a graph worker's ``SharedWeights`` wrote in ``folder`` for ``model`` alone, and
        point ``model``'s tensors at this file, in place. Its tensors come in the order the worker met them, each
        unless this file holds its bytes: the part's own bytes copied from it, the views of the model's memory it
        deferred read from ``stable`` (this process's copy of that memory) and hashed here. Graphs absorbed in graph
        order so give the file a graph-by-graph export writes, byte for byte. The caller removes the part file."""
        deferred: list[tuple] = []
        with self.path.open("ab") as file, (Path(folder) / part.file).open("rb") as source:
            for _, item in part.order:
                if isinstance(item, tuple):  # ("view", key)
                    deferred.append(item)
                    if item not in self.views:
                        data = _bytes_of(stable.array(item))
                        self.views[item] = self._append(file, data, hashlib.sha256(data).digest())
                elif item not in self.offsets:
                    offset, length = part.offsets[item]
                    start = self._pad(file)
                    self._copy(file, source, offset, length, f"{part.file} at {offset}")
                    self.offsets[item] = (start, length)
        digests = {placed: digest for digest, placed in part.offsets.items()}
        for tensor in _get_all_tensors(model):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            stored = ExternalTensor.of(tensor)
            if stored.location == part.file:
                offset, length = self.offsets[digests[(stored.offset, stored.length)]]
            elif stored.location == part.deferred_location:
                offset, length = self.views[deferred[stored.offset]]
            else:
                continue
            self.referenced_bytes += length
            _point_at(tensor, self.path.name, offset, length)

    def _append_external(self, file, tensor: onnx.TensorProto, folder: Path) -> tuple[int, int]:
        """Copy an external tensor's bytes from ``folder`` in chunks, hashing as it goes; a tensor already in the
        file is cut off again and referenced at its first offset. Returns ``(offset, length)``."""
        source = ExternalTensor.of(tensor)
        before = file.tell()
        start, hasher = self._pad(file), hashlib.sha256()
        with open(folder / source.location, "rb") as handle:
            self._copy(file, handle, source.offset, source.length, f"tensor {tensor.name} in {source.location}", hasher)
        digest = hasher.digest()
        if digest in self.offsets:
            self._file_digest = None  # the running digest has hashed bytes the file no longer holds
            file.truncate(before)
            file.seek(before)  # truncate leaves the buffered position where the write ended
            return self.offsets[digest]
        self.offsets[digest] = (start, source.length)
        return self.offsets[digest]

    def _copy(self, file, handle, offset: int, length: int, what: str, hasher=None) -> None:
        """Append ``length`` bytes of ``handle`` from ``offset`` to ``file`` in chunks of ``CHUNK_BYTES``, each also
        fed to ``hasher`` when given; a source that ends early is an error naming ``what`` was read."""
        handle.seek(offset)
        remaining = length
        while remaining:
            chunk = handle.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                raise OSError(f"the file ends before the data of {what}")
            if hasher is not None:
                hasher.update(chunk)
            self._write(file, chunk)
            remaining -= len(chunk)


def _point_at(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make ``tensor`` read its bytes from ``location`` at ``offset`` (in place)."""
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")


def load_inline(model: onnx.ModelProto, names: set[str], folder: Path, weights: SharedWeights | None = None) -> None:
    """Read the initializers of ``model`` named ``names`` whose data is external (in ``folder``) into the graph, in
    place: the constants the ``fold_constants`` pass folds, which onnx-graphsurgeon evaluates with ONNX Runtime from
    the graph's bytes, where an external reference does not resolve: with Qwen-VL's patch-embedding weight (6 MB,
    reshaped for its Gemm) the pass failed for the whole vision graph of a real-size export, printing ONNX Runtime's
    error (the exporter's own folding had done the rest, so the Reshape alone stayed, for every session to fold). A
    tensor folded away keeps its bytes in the shared file, unreferenced. ``weights``: the graph's ``SharedWeights``,
    whose deferred views (a graph worker's) are read from memory."""
    from onnx.external_data_helper import load_external_data_for_tensor

    for tensor in model.graph.initializer:
        if tensor.name in names and tensor.data_location == onnx.TensorProto.EXTERNAL:
            view = weights.deferred_view(tensor) if weights is not None else None
            if view is not None:
                tensor.raw_data = _contiguous(view).tobytes()
            else:
                load_external_data_for_tensor(tensor, str(folder))
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT


class StableMemory:
    """Address ranges that hold the same bytes for as long as an export runs (its model's parameters and buffers)."""

    def __init__(self, tensors) -> None:
        ranges = sorted(
            ((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes(), t) for t in tensors), key=lambda r: r[:2]
        )
        self.starts = [start for start, _, _ in ranges]
        self.ends = [start + size for start, size, _ in ranges]
        self.tensors = [tensor for _, _, tensor in ranges]  # one tensor of each range's storage

    def key(self, array: np.ndarray) -> tuple | None:
        """What identifies ``array``'s bytes when it lies inside one stable range (its address, shape, strides and
        dtype); ``None`` otherwise."""
        start = array.__array_interface__["data"][0]
        if array.size == 0 or any(stride < 0 for stride in array.strides):
            return None
        end = start + sum((dim - 1) * stride for dim, stride in zip(array.shape, array.strides)) + array.itemsize
        index = bisect.bisect_right(self.starts, start) - 1
        if index < 0 or end > self.ends[index]:
            return None
        return start, array.shape, array.strides, array.dtype.str

    def array(self, key: tuple) -> np.ndarray:
        """The bytes a ``key`` of this memory identifies, as an array over this process's copy of it (no copy)."""
        start, shape, strides, dtype = key
        index = bisect.bisect_right(self.starts, start) - 1
        owner = self.tensors[index].detach()
        size = owner.element_size()
        offset, unaligned = divmod(start - self.starts[index], size)
        view = None
        if not unaligned and not any(stride % size for stride in strides):
            view = owner.as_strided(shape, [stride // size for stride in strides], offset).numpy()
        if view is None or view.dtype != np.dtype(dtype):
            raise ValueError(f"no {dtype} view of {shape} at {start:#x} in the stable memory")
        return view


def _bytes_of(array: np.ndarray) -> memoryview:
    """The bytes of ``array`` in C order."""
    return _contiguous(array).data.cast("B")


def _initializer_name(value: ir.Value) -> str:
    if value.name is None:
        raise ValueError("an initializer without a name cannot be stored outside its graph")
    return value.name


def _contiguous(array: np.ndarray) -> np.ndarray:
    """``array`` in C order; a strided view (a folded transpose) is copied by PyTorch, several times faster than NumPy
    for float16."""
    if array.flags["C_CONTIGUOUS"]:
        return array
    try:
        return torch.from_numpy(array).contiguous().numpy()
    except TypeError:  # a dtype PyTorch does not take from NumPy (ml_dtypes' bfloat16, float8, int4)
        return np.ascontiguousarray(array)
