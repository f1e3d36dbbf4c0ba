"""Calibration and explicit quantization (INT8/FP8 Q/DQ) of an fp32 export, with LUVC compression in the loop;
TensorRT 10 calibration caches for the legacy implicit-INT8 path. Names load on first use."""

from luvc.lazy import lazy_exports

_EXPORTS = {
    "METHODS": "luvc.calibration.quantize",
    "PRECISIONS": "luvc.calibration.quantize",
    "CalibratedExportFromExport": "luvc.calibration.calibrator",
    "activation_ranges": "luvc.calibration.quantize",
    "calibrate_export": "luvc.calibration.calibrator",
    "collect_feeds": "luvc.calibration.calibrator",
    "excluded_nodes": "luvc.calibration.quantize",
    "format_calibration_cache": "luvc.calibration.cache",
    "read_calibration_cache": "luvc.calibration.cache",
    "write_calibration_cache": "luvc.calibration.cache",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
