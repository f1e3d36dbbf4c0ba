"""The weights of an export held once per pipeline, by every ONNX Runtime session and TensorRT engine that uses them.

Every LLM graph of an export (a prefill graph per bucket, and decode) points into the same ``weights.data``. Given
the graph paths, ONNX Runtime reads each graph's initializers into buffers of its own, so the LLM is in memory once
per session; on the CPU EP an fp16 graph is worse, since ONNX Runtime has float32 kernels only for most ops and
converts every float16 weight to float32 inside each session. TensorRT engines would each hold their own copy too.

``MappedWeights`` memory-maps each external-data file once and hands out each tensor (by file, offset and length)
once, however many graphs use it:

- ONNX Runtime on the CPU gets them as shared initializers (``SessionOptions.add_initializer``): float32 weights are
  views of the file, paged in from the file cache as they are read; an fp16 graph is rewritten to compute in
  float32 (``luvc.runtime.float32_graph``), as ONNX Runtime's CPU EP computes it anyway, and each float16 tensor is
  converted once.
- ONNX Runtime with the CUDA EP gets the shareable weights (``luvc.engines.weight_inputs``: the matrices of
  products and the embedding tables) as shared initializers already on the GPU, in the export's precision.
- TensorRT engines of the shared layout take those weights as inputs: ``device_tensor`` is the one device buffer
  bound to every engine's input of that name.

Sessions given shared weights turn ONNX Runtime's weight prepacking off, since packed copies are per session again,
and its CPU memory arena, which keeps each session's peak activations. Quantized graphs (INT8/FP8/INT4 weights behind
a ``DequantizeLinear``) keep prepacking: ONNX Runtime's quantized CPU kernels run several times slower unpacked, and
those sessions pay a packed copy of their quantized weights each for it; the products such a graph keeps in float
(the LM head, heavy-tailed products) are declared overridable in the prefill graphs, which ONNX Runtime never packs
(``overridable_float_weights``; the decode step keeps its packed copy). The file pages such a session read to pack
are then taken out of the process (``drop_resident_pages``): at Qwen2.5-VL-3B's widths the INT8 export's 5.8 GB file
stayed resident beside the packed copies, though nothing read it again. Weight-only INT8 products are given to ONNX
Runtime as the ``MatMulNBits`` its CPU EP would make of them (``luvc.runtime.matmul_nbits``), their weights converted
once and kept in the start-up cache, instead of each session converting them again.
"""

from __future__ import annotations

import dataclasses
import functools
import mmap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from luvc import cache
from luvc.engines.weight_inputs import shareable_weights
from luvc.errors import critical
from luvc.export.manifest import ExternalTensor, constant_folded_initializers, external_tensors
from luvc.runtime import matmul_nbits
from luvc.runtime.float32_graph import AS_EXPORTED, COMPUTE_MODES, FLOAT16_ROUNDED, float32_compute, has_float16
from luvc.runtime.matmul_nbits import NBitsProduct, blocked_scales, blocked_weight, weight_only_products
from luvc.runtime.qdq_cpu import encode_for_cpu, shift_to_uint8

if TYPE_CHECKING:  # torch is imported where a GPU's tensors are made: the CPU's sessions open without it
    import torch

FLOAT16, FLOAT = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
INT8, UINT8 = onnx.TensorProto.INT8, onnx.TensorProto.UINT8


def widened_to_float32(values: np.ndarray) -> np.ndarray:
    """float16 ``values`` as float32 (``float32_compute``'s weights), by torch: 1.4x NumPy's ``astype`` (2026-11-29,
    a 4096 x 8960 weight). Only a start that finds no conversion in the cache makes them; a session opening beside the
    runtime's import of torch (``luvc.runtime.opening``) waits for that import here."""
    import torch

    return torch.from_numpy(values).float().numpy()


# (stored type, type a graph reads) -> how the stored values are converted; the same type is a view of the file
CONVERSIONS: dict[tuple[int, int], Callable[[np.ndarray], np.ndarray]] = {
    (FLOAT16, FLOAT): widened_to_float32,
    (INT8, UINT8): shift_to_uint8,  # luvc.runtime.qdq_cpu.unsigned_weights: zero point + 128
}
NBITS_CACHE = "matmul_nbits"  # the start-up cache's kind of conversion for MatMulNBits weights (luvc.cache)
# types packed two to a byte (INT4 weights) have no NumPy view: ONNX Runtime reads them from the file per session (on
# the CPU, the MatMulNBits rewrite reads their bytes and converts them once: luvc.runtime.matmul_nbits)
PACKED_TYPES = frozenset({onnx.TensorProto.INT4, onnx.TensorProto.UINT4})
# types whose NumPy arrays (ml_dtypes) neither ONNX Runtime ("only supported from non-string numpy arrays") nor
# torch.from_numpy takes: an FP8 export's weights, handed over as their bits with the type named -> the name of
# torch's type (looked up when used: torch before 2.1, which run and serve support, has no float8 types)
BIT_VIEWED: dict[int, str] = {  # ONNX element type -> torch dtype name
    onnx.TensorProto.FLOAT8E4M3FN: "float8_e4m3fn",
    onnx.TensorProto.FLOAT8E4M3FNUZ: "float8_e4m3fnuz",
    onnx.TensorProto.FLOAT8E5M2: "float8_e5m2",
    onnx.TensorProto.FLOAT8E5M2FNUZ: "float8_e5m2fnuz",
    onnx.TensorProto.BFLOAT16: "bfloat16",
}


class MappedWeights:
    """The external-data files of the export in ``folder``, memory-mapped read-only, the float32 conversions made
    from them, and (on a GPU ``device``) the device copies; each tensor (by file, offset and length) is handed out as
    one array, one ONNX Runtime value and one device tensor however many graphs use it. ``compute`` (of
    ``luvc.runtime.float32_graph.COMPUTE_MODES``) is how the CPU computes float16 graphs: as exported, or rewritten to
    compute in float32 (``IN_FLOAT32``, the CPU's way; ``FLOAT16_ROUNDED``, rounding what the graph computed in float16:
    parity's float16 arithmetic) from float32 weights converted once and kept in the user's cache (``luvc.cache``) by
    the sha256 of their file (``digests``). ``int8_encoding`` is how INT8 Q/DQ graphs run on the CPU
    (``luvc.runtime.qdq_cpu.int8_encoding``; default: what this CPU computes exactly)."""

    def __init__(
        self,
        folder: str | Path,
        compute: str = AS_EXPORTED,
        device: torch.device | None = None,
        int8_encoding: str | None = None,
        digests: dict[str, str] | None = None,
    ) -> None:
        if compute not in COMPUTE_MODES:
            raise ValueError(f"compute {compute!r} is none of {COMPUTE_MODES}")
        self.folder = Path(folder)
        self.compute = compute
        self.float32 = compute != AS_EXPORTED  # float16 graphs compute in float32, from float32 weights
        self.digests = digests or {}  # file -> its sha256 (the manifest's): float32 conversions are cached by it
        self._digests_checked: dict[str, str | None] = {}
        self._from_cache: set[tuple[ExternalTensor, int]] = set()  # conversions an earlier start made
        self.int8_encoding = int8_encoding
        self.device = device  # None: the CPU
        self.on_gpu = device is not None and device.type != "cpu"
        self._files: dict[str, np.ndarray] = {}  # location -> its bytes, a view of ``_mappings``' map
        self._mappings: dict[str, mmap.mmap] = {}
        # by file, offset, length, stored type and shape, and the type handed out
        self._arrays: dict[tuple[ExternalTensor, int], np.ndarray] = {}
        self._values: dict[tuple[ExternalTensor, int], object] = {}  # ONNX Runtime values, by the same key
        self._device_tensors: dict[ExternalTensor, torch.Tensor] = {}
        # weights and scales in ``MatMulNBits``' layout and their ONNX Runtime values, by source and layout
        self._nbits_made: dict[tuple, tuple[np.ndarray, object]] = {}
        # sessions may open on several threads (``Sessions.begin_opening``): one rewrites its graph at a time, so that
        # each tensor is still converted and handed out once
        self._rewriting = threading.Lock()

    def session_model(self, model: onnx.ModelProto, options) -> tuple[bytes, list]:
        """Prepare ``model`` (a graph of the export, loaded without its external data) for an ONNX Runtime session
        made with ``options``: rewritten to float32 compute if so set, its INT8 products to the encoding this x86 CPU
        computes exactly (``luvc.runtime.qdq_cpu``), and, when it has external weights, those given
        as the shared arrays with prepacking off (packed copies would be per session; quantized graphs keep it) and no
        CPU memory arena (an arena keeps each session's peak activations: 0.17 GiB of a 2.7 GiB run on a 2B-width
        export, at the same speed). Returns the serialized model and the OrtValues of the shared arrays, which must
        outlive the session. Thread-safe."""
        with self._rewriting:
            return self._session_model(model, options)

    def _session_model(self, model: onnx.ModelProto, options) -> tuple[bytes, list]:
        on_gpu = self.on_gpu
        # on a GPU only the weights its kernels read stay shared (a small constant may be needed on the host)
        tensors = shareable_weights(model) if on_gpu else external_tensors(model)
        quantized = is_quantized(model)
        external = {tensor.name: tensor for tensor in tensors}  # INT4 ones too, which only the rewrite below reads
        tensors = [tensor for tensor in tensors if tensor.data_type not in PACKED_TYPES]
        if self.float32 and has_float16(model):
            model = float32_compute(model, self.compute == FLOAT16_ROUNDED)
        given: dict[str, object] = {}  # initializers the rewrites below declare, by name: their shared values
        if quantized and not on_gpu:
            given = self._as_matmul_nbits(model, external)
            encode_for_cpu(model, self.int8_encoding)  # INT8 Q/DQ MatMuls fuse on x86 only with uint8 activations
            if not is_decode_step(model):  # a step runs per token: it keeps its packed copy, the faster one
                overridable_float_weights(model, set(external))
        # the type the rewritten graph reads each weight as: a stored float16 or int8 one is converted once
        graph_types = {tensor.name: tensor.data_type for tensor in model.graph.initializer}
        # a graph given as bytes resolves its external-data references from here (each is given, none is read)
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.folder))
        if tensors:
            # a quantized graph keeps prepacking: for one token through a 1536 x 8960 weight, ONNX Runtime's INT4
            # MatMulNBits takes 39 ms unpacked against 0.11 ms packed, its INT8 Q/DQ MatMul 1.12 against 0.16 ms
            if not quantized:
                options.add_session_config_entry("session.disable_prepacking", "1")
            options.enable_cpu_mem_arena = False
        # ONNX Runtime's graph transformers read some weights from the graph itself (Conv weights they reorder, small
        # constants they fuse): a converted one must be inline, since its file still holds the float16 bytes
        read_by_transformers = _read_by_transformers(model, tensors)
        initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        values = []
        for name, value in given.items():
            values.append(value)
            options.add_initializer(name, value)
        for tensor in tensors:
            if tensor.name not in graph_types:  # a weight the rewrites replaced
                continue
            as_type = graph_types[tensor.name]
            if as_type != tensor.data_type and tensor.name in read_by_transformers:
                array = self.array(tensor, as_type)
                initializers[tensor.name].CopyFrom(numpy_helper.from_array(array, tensor.name))
                continue
            values.append(self.ort_value(tensor, as_type))
            options.add_initializer(tensor.name, values[-1])
        return model.SerializeToString(), values

    def _as_matmul_nbits(self, model: onnx.ModelProto, external: dict[str, ExternalTensor]) -> dict[str, object]:
        """Rewrite the weight-only products of ``model`` as ``MatMulNBits`` (``luvc.runtime.matmul_nbits``), and
        return the ONNX Runtime values of the converted weights and scales it declares, by name: each made once
        however many sessions read it, the weights kept in the start-up cache. A product whose weight is inline in
        the graph (a small model) gets its converted weight and scales inline."""
        products = weight_only_products(model)
        inline = {tensor.name: tensor for tensor in model.graph.initializer}
        tensors: dict[str, onnx.TensorProto] = {}
        given = {}
        for product in products:
            weight, scales = external.get(product.weight), external.get(product.scales)
            scales_type = helper.tensor_dtype_to_np_dtype(inline[product.scales].data_type)  # what the graph reads
            weight_key = None if weight is None else (_key(weight), product.bits, product.block_size)
            scales_key = None if scales is None else (_key(scales), product.k, scales_type)
            stored_scales = self._stored(scales, inline[product.scales])
            made = {
                product.blocked_names[0]: self._nbits(
                    weight_key, functools.partial(self._blocked_weight, product, weight, inline[product.weight])
                ),
                product.blocked_names[1]: self._nbits(
                    scales_key, functools.partial(blocked_scales, product, stored_scales, scales_type)
                ),
            }
            for name, (array, value) in made.items():
                if weight is None:
                    tensors[name] = numpy_helper.from_array(array, name)
                else:
                    tensors[name] = matmul_nbits.given(name, array, weight.location)
                    given[name] = value
        matmul_nbits.as_matmul_nbits(model, products, tensors)
        return given

    def _nbits(self, key: tuple | None, make: Callable[[], np.ndarray]) -> tuple[np.ndarray, object]:
        """The array ``make`` returns and its ONNX Runtime value, made once per ``key`` (None: each time)."""
        import onnxruntime as ort

        if key is not None and key in self._nbits_made:
            return self._nbits_made[key]
        array = make()
        made = array, ort.OrtValue.ortvalue_from_numpy(array)
        if key is not None:
            self._nbits_made[key] = made
        return made

    def _stored(self, tensor: ExternalTensor | None, declared: onnx.TensorProto) -> np.ndarray:
        """An initializer's values as stored (INT4 ones unpacked to int8): a view of its file, or read from the
        graph where it is inline (``tensor`` None)."""
        if tensor is None:
            values = numpy_helper.to_array(declared)
            return values.astype(np.int8) if declared.data_type in PACKED_TYPES else values
        if tensor.data_type in PACKED_TYPES:
            packed = self._file(tensor.location)[tensor.offset : tensor.offset + tensor.length]
            rows, columns = tensor.shape
            return matmul_nbits.unpacked_int4(packed, (rows, columns))
        return self.array(tensor, tensor.data_type)

    def _blocked_weight(
        self, product: NBitsProduct, source: ExternalTensor | None, declared: onnx.TensorProto
    ) -> np.ndarray:
        """``product``'s weight in ``MatMulNBits``' layout, kept in the start-up cache where ``source`` (its stored
        tensor, None where inline) is in a verified file (``_kept``)."""

        def convert() -> np.ndarray:
            return blocked_weight(product, self._stored(source, declared))

        return convert() if source is None else self._kept(source, NBITS_CACHE, product.blocked_shape, convert)[0]

    def ort_value(self, tensor: ExternalTensor, as_type: int | None = None):
        """``tensor`` as one ONNX Runtime value for every session: on the CPU a view of the array (as ``array``
        converts it), on a GPU the device tensor (``device_tensor``) lent to it."""
        import onnxruntime as ort

        key = (_key(tensor), self._type_given(tensor, as_type))
        if key not in self._values:
            if not self.on_gpu:
                array = self.array(tensor, as_type)
                if key[1] in BIT_VIEWED:  # FP8 weights: ONNX Runtime takes their bits with the type named
                    self._values[key] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(_bits(array), key[1])
                else:
                    self._values[key] = ort.OrtValue.ortvalue_from_numpy(array)
            else:
                # ONNX Runtime shares only a buffer it does not own (a value it copied to the GPU is refused with
                # "Buffer containing the initializer must be owned by the user"): the device tensor, lent through
                # DLPack, is that buffer, and the one TensorRT engines are bound to
                self._values[key] = borrowed_ort_value(self.device_tensor(tensor))
        return self._values[key]

    def _converted(self, tensor: ExternalTensor, as_type: int, convert: Callable) -> np.ndarray:
        """``tensor`` converted to ``as_type``: float16 weights to float32 once per export, kept in the user's cache
        (a start after the first maps what the first converted), other conversions each start."""

        def read_and_convert() -> np.ndarray:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            count = tensor.length // dtype.itemsize
            data = np.fromfile(self.folder / tensor.location, dtype, count, offset=tensor.offset)
            return convert(data.reshape(tensor.shape))

        if as_type != FLOAT:
            return read_and_convert()
        array, earlier = self._kept(tensor, "float32", tensor.shape, read_and_convert)
        if earlier:
            self._from_cache.add((_key(tensor), as_type))
        return array

    def _kept(
        self, tensor: ExternalTensor, kind: str, shape: tuple[int, ...], convert: Callable[[], np.ndarray]
    ) -> tuple[np.ndarray, bool]:
        """What ``convert`` makes of ``tensor`` (a conversion ``kind`` of ``luvc.cache.CONVERSIONS``, of ``shape``):
        mapped from the start-up cache where an earlier start kept it (and True), else made, and kept for the next
        start when ``tensor``'s file is verified (a conversion is cached only under the digest of its source)."""
        digest = self._verified_digest(tensor.location)
        if digest is not None:
            kept = cache.cached_conversion(digest, tensor.offset, tensor.length, shape, kind)
            if kept is not None:
                return kept, True
        array = convert()
        if digest is not None:
            array = cache.keep_conversion(digest, tensor.offset, tensor.length, array, kind)
        return array, False

    def _verified_digest(self, location: str) -> str | None:
        """The sha256 of weights file ``location`` where the cache saw it verified and it is unchanged since (a
        conversion is cached only under the digest of the bytes it was made from), else None."""
        if location not in self._digests_checked:
            digest = self.digests.get(location)
            known = digest is not None and cache.known_digest(self.folder / location, digest)
            self._digests_checked[location] = digest if known else None
        return self._digests_checked[location]

    def device_tensor(self, tensor: ExternalTensor) -> torch.Tensor:
        """``tensor`` as one torch tensor on the device, for every TensorRT engine that takes it as an input."""
        import torch

        key = _key(tensor)
        if key not in self._device_tensors:
            array = self.array(tensor)
            if tensor.data_type in BIT_VIEWED:  # FP8 weights: torch takes their bits, viewed as its own type
                name = BIT_VIEWED[tensor.data_type]
                if not hasattr(torch, name):
                    critical(f"{tensor.name} is {name}, which this torch lacks; use torch 2.1 or newer.")
                host = torch.from_numpy(np.array(_bits(array))).view(getattr(torch, name))
            else:
                host = torch.from_numpy(np.array(array))
            self._device_tensors[key] = host.to(self.device)
        return self._device_tensors[key]

    def array(self, tensor: ExternalTensor, as_type: int | None = None) -> np.ndarray:
        """``tensor``'s data as ``as_type`` (default: float32 for float16 with ``float32`` set, else as stored): a
        read-only view of its file, or a converted copy (``CONVERSIONS``) read from the file without mapping it (the
        stored bytes are not kept), or mapped from the user's cache."""
        as_type = self._type_given(tensor, as_type)
        key = (_key(tensor), as_type)
        if key not in self._arrays:
            if as_type != tensor.data_type:
                convert = CONVERSIONS.get((tensor.data_type, as_type))
                if convert is None:
                    raise ValueError(f"{tensor.name}: no conversion from ONNX type {tensor.data_type} to {as_type}")
                self._arrays[key] = self._converted(tensor, as_type, convert)
            else:
                data = self._file(tensor.location)[tensor.offset : tensor.offset + tensor.length]
                self._arrays[key] = data.view(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).reshape(
                    tensor.shape
                )
        return self._arrays[key]

    def _type_given(self, tensor: ExternalTensor, as_type: int | None) -> int:
        if as_type is not None:
            return as_type
        return FLOAT if self.float32 and tensor.data_type == FLOAT16 else tensor.data_type

    def _file(self, location: str) -> np.ndarray:
        if location not in self._files:
            with open(self.folder / location, "rb") as handle:  # the map keeps the file open
                self._mappings[location] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self._files[location] = np.frombuffer(self._mappings[location], dtype=np.uint8)
        return self._files[location]

    def drop_resident_pages(self) -> None:
        """Let the kernel take the mapped files' pages (and the cached ``MatMulNBits`` weights') out of this process
        (``MADV_DONTNEED``) once a quantized CPU session has packed its own copies of the weights it read: those
        pages are clean and no longer read, yet count in the process's resident memory until reclaimed (the whole
        INT8 file, 5.8 GB at 3B widths). A page read again comes back from the page cache (or the file)."""
        if not hasattr(mmap, "MADV_DONTNEED"):  # Windows
            return
        with self._rewriting:  # another thread's session may be adding to these meanwhile
            # the files' maps, and the MatMulNBits weights mapped from the start-up cache (which sessions have packed)
            nbits_maps = [getattr(array, "_mmap", None) for array, _ in self._nbits_made.values()]
            for mapping in [*self._mappings.values(), *filter(None, nbits_maps)]:
                mapping.madvise(mmap.MADV_DONTNEED)

    @property
    def device_bytes(self) -> int:
        """Bytes of the weights held in GPU memory (ONNX Runtime values and TensorRT input buffers)."""
        # ONNX Runtime's values on a GPU borrow these tensors
        return sum(t.numel() * t.element_size() for t in self._device_tensors.values())

    @property
    def converted_bytes(self) -> int:
        """Bytes of the converted copies (anonymous memory, or pages of the cache's files where ``cached_bytes``)."""
        return sum(array.nbytes for (tensor, as_type), array in self._arrays.items() if as_type != tensor.data_type)

    @property
    def cached_bytes(self) -> int:
        """Bytes of the converted copies an earlier start made, mapped from the user's cache (``luvc.cache``)."""
        return sum(self._arrays[key].nbytes for key in self._from_cache)

    @property
    def mapped_bytes(self) -> int:
        """Bytes of the tensors handed out as views of their files."""
        return sum(array.nbytes for (tensor, as_type), array in self._arrays.items() if as_type == tensor.data_type)

    def close(self) -> None:
        self._values.clear()
        self._nbits_made.clear()
        self._device_tensors.clear()
        self._arrays.clear()
        self._from_cache.clear()
        self._files.clear()
        self._mappings.clear()  # each map closes when the last view of it goes


def overridable_float_weights(model: onnx.ModelProto, names: set[str]) -> None:
    """Declare the float weights of ``model``'s products among ``names`` (its external tensors) as graph inputs too,
    so that ONNX Runtime takes them as overridable initializers, which it does not prepack. A quantized graph keeps
    prepacking for its quantized kernels, and each of its sessions would otherwise also pack a copy of the products
    kept in float (the LM head, heavy-tailed products): at Qwen2-VL-2B's widths 1.37 GB a session and 1.5 s of its
    opening. The prefill graphs, which run once a request, take them unpacked; the decode step keeps its packed copy
    (ONNX Runtime packs an unpacked weight again at every product: unpacked, an INT8 step may run slower)."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    declared = {value.name for value in model.graph.input}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] in declared:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or weight.name not in names or weight.data_type != onnx.TensorProto.FLOAT:
            continue
        model.graph.input.append(helper.make_tensor_value_info(weight.name, weight.data_type, list(weight.dims)))
        declared.add(weight.name)


def is_decode_step(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is a decode graph (it takes ``kv_write_index``)."""
    return any(value.name == "kv_write_index" for value in model.graph.input)


def is_quantized(model: onnx.ModelProto) -> bool:
    """Whether ``model`` reads weights through ``DequantizeLinear`` (an INT8, FP8 or INT4 export's graph): its CPU
    session keeps ONNX Runtime's weight prepacking."""
    return any(node.op_type == "DequantizeLinear" for node in model.graph.node)


def _bits(array: np.ndarray) -> np.ndarray:
    """``array`` viewed as unsigned integers of its width (an FP8 or bfloat16 array as its raw bits)."""
    return array.view(f"u{array.dtype.itemsize}")


def borrowed_ort_value(tensor: torch.Tensor):
    """An ONNX Runtime value over ``tensor``'s memory, without a copy (DLPack): ONNX Runtime does not own it, so a
    session can take it as a shared initializer. ``tensor`` must outlive every session given it (the value keeps a
    reference)."""
    import onnxruntime as ort
    from onnxruntime.capi import _pybind_state

    # the binding, not ``OrtValue.from_dlpack``: onnxruntime-gpu 1.31 has only the binding
    return ort.OrtValue(_pybind_state.OrtValue.from_dlpack(tensor.__dlpack__()), tensor)


def _key(tensor: ExternalTensor) -> ExternalTensor:
    """What identifies a tensor's data: tensors stored once in the file share their array, whatever their name."""
    return dataclasses.replace(tensor, name="")


SMALL_BYTES = 1 << 20  # constants below this may be read by ONNX Runtime's fusions


def _read_by_transformers(model: onnx.ModelProto, tensors: list[ExternalTensor]) -> set[str]:
    """Initializers ONNX Runtime's graph transformers may read from the graph: Conv weights, small tensors, and what
    constant folding evaluates (every input of a node whose inputs are all constant, such as CLIP's 1.2 MB position
    table looked up at constant positions), but for a quantized weight read only by its DequantizeLinear: constant
    folding keeps those for the Q/DQ fusions, which take the weight as it is given."""
    names = {node.input[1] for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose")}
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            readers.setdefault(name, set()).add(node.op_type if index == 0 else "")
    folded = {name for name in constant_folded_initializers(model) if readers.get(name) != {"DequantizeLinear"}}
    return names | folded | {tensor.name for tensor in tensors if tensor.length < SMALL_BYTES}
