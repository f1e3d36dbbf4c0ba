"""ctypes access to the plugin library's C interface (plugins/src/c_api.cpp): plugin fields as TensorRT's ONNX
parser hands them to a creator, the serialization round trip, and the kernels on CUDA tensors."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

INT32, INT64, FLOAT32, CHAR = 5, 10, 1, 6  # nvinfer1::PluginFieldType


class PluginField(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("data", ctypes.c_void_p),
        ("type", ctypes.c_int32),
        ("length", ctypes.c_int32),
    ]


class PluginFieldCollection(ctypes.Structure):
    _fields_ = [("nbFields", ctypes.c_int32), ("fields", ctypes.POINTER(PluginField))]


class Fields:
    """A PluginFieldCollection built from Python values (ints as INT32 like the ONNX parser, or INT64)."""

    def __init__(self, values: dict, int_type: int = INT32) -> None:
        self._keep = []
        fields = []
        for name, value in values.items():
            if isinstance(value, str):
                data = ctypes.create_string_buffer(value.encode())
                fields.append(PluginField(name.encode(), ctypes.cast(data, ctypes.c_void_p), CHAR, len(value)))
            else:
                floats = any(isinstance(v, float) for v in np.atleast_1d(value))
                dtype = np.float32 if floats else (np.int32 if int_type == INT32 else np.int64)
                data = np.ascontiguousarray(np.atleast_1d(value), dtype=dtype)
                kind = FLOAT32 if floats else int_type
                fields.append(PluginField(name.encode(), data.ctypes.data, kind, data.size))
            self._keep.append(data)
        self._array = (PluginField * len(fields))(*fields)
        self.collection = PluginFieldCollection(len(fields), self._array)

    @property
    def pointer(self):
        return ctypes.byref(self.collection)


class PluginLibrary:
    """The C interface of one built library."""

    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        self.lib.luvc_last_error.restype = ctypes.c_char_p
        self.lib.luvc_fields_round_trip.restype = ctypes.c_int32

    def round_trip(self, plugin: str, fields: Fields) -> int:
        return self.lib.luvc_fields_round_trip(plugin.encode(), fields.pointer)

    @property
    def last_error(self) -> str:
        return self.lib.luvc_last_error().decode()

    def ortho_merge(self, fields: Fields, x, y) -> int:
        dims = (ctypes.c_int64 * x.dim())(*x.shape)
        kind = 0 if x.dtype.itemsize == 4 else 1
        return self.lib.luvc_ortho_merge_forward(
            fields.pointer, kind, dims, x.dim(), ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr())
        )

    def spectrum_prune(self, fields: Fields, hidden, cos, sin, visual_ids, outputs) -> int:
        batch, length, width = hidden.shape
        kind = 0 if hidden.dtype.itemsize == 4 else 1
        pointers = [ctypes.c_void_p(t.data_ptr()) for t in (hidden, cos, sin, visual_ids, *outputs)]
        sizes = [ctypes.c_int64(v) for v in (batch, length, width, cos.shape[-1])]
        return self.lib.luvc_spectrum_prune_forward(fields.pointer, kind, *sizes, *pointers)
