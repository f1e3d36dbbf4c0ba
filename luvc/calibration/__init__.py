"""Calibration and explicit quantization (INT8/FP8 Q/DQ) of an fp32 export, with LUVC compression in the loop;
TensorRT 10 calibration caches for the legacy implicit-INT8 path."""

from luvc.calibration.cache import format_calibration_cache, read_calibration_cache, write_calibration_cache
from luvc.calibration.calibrator import CalibratedExportFromExport, calibrate_export, collect_feeds
from luvc.calibration.quantize import METHODS, PRECISIONS, activation_ranges, excluded_nodes

__all__ = [
    "METHODS",
    "PRECISIONS",
    "CalibratedExportFromExport",
    "activation_ranges",
    "calibrate_export",
    "collect_feeds",
    "excluded_nodes",
    "format_calibration_cache",
    "read_calibration_cache",
    "write_calibration_cache",
]
