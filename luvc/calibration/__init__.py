"""Calibration and explicit quantization (INT8/FP8 Q/DQ) of an fp32 export, with LUVC compression in the loop;
TensorRT 10 calibration caches for the legacy implicit-INT8 path. Names load on first use."""

from luvc.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "luvc.calibration.cache": ("format_calibration_cache", "read_calibration_cache", "write_calibration_cache"),
        "luvc.calibration.calibrator": ("CalibratedExportFromExport", "calibrate_export"),
        "luvc.calibration.feeds": ("collect_feeds",),
        "luvc.calibration.quantize": ("METHODS", "PRECISIONS", "activation_ranges", "excluded_nodes"),
    },
)
