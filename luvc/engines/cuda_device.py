"""The compute capability of a CUDA device, asked of the CUDA driver itself (``libcuda``) through ``ctypes``.

Building and checking engines needs this one fact and nothing else from CUDA, so ``build`` and the TensorRT runtime's
engine checks load neither PyTorch nor a CUDA runtime library for it: on a Jetson, JetPack's driver is enough.
"""

from __future__ import annotations

import ctypes
import functools

DRIVER_LIBRARIES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")  # Linux (Jetson included), then Windows
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75  # CUdevice_attribute in cuda.h
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
CUDA_SUCCESS = 0


@functools.cache
def _driver() -> ctypes.CDLL | None:
    """The initialised CUDA driver, or ``None`` without one (no NVIDIA driver, or no device it can use)."""
    for name in DRIVER_LIBRARIES:
        try:
            driver = ctypes.CDLL(name)
        except OSError:
            continue
        return driver if driver.cuInit(0) == CUDA_SUCCESS else None
    return None


def device_count() -> int:
    """How many CUDA devices this process sees (``CUDA_VISIBLE_DEVICES`` applies); 0 without a driver."""
    driver = _driver()
    count = ctypes.c_int(0)
    if driver is None or driver.cuDeviceGetCount(ctypes.byref(count)) != CUDA_SUCCESS:
        return 0
    return count.value


def device_capability(index: int = 0) -> tuple[int, int] | None:
    """Compute capability ``(major, minor)`` of CUDA device ``index``, or ``None`` when there is no such device."""
    if not 0 <= index < device_count():
        return None
    driver = _driver()
    if driver is None:
        return None
    device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    calls = (
        driver.cuDeviceGet(ctypes.byref(device), index),
        driver.cuDeviceGetAttribute(ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device),
        driver.cuDeviceGetAttribute(ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device),
    )
    return (major.value, minor.value) if all(status == CUDA_SUCCESS for status in calls) else None
