"""``CalibratedExportFromExport``: an export -> a calibrated export of the precision asked for, by the loader that
produces it: ``QdqExportFromExport`` (INT8/FP8 Q/DQ, ``luvc.calibration.qdq_calibrator``) or
``WeightOnlyExportFromExport`` (INT4, int8w, ``luvc.calibration.weight_only_calibrator``). Their shared steps are in
``luvc.calibration.calibrated_export``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from luvc.calibration.calibrated_export import CalibratedExport, CalibrationOptions
from luvc.calibration.qdq_calibrator import QdqExportFromExport
from luvc.calibration.weight_only_calibrator import WeightOnlyExportFromExport
from luvc.loaders import functional


@dataclasses.dataclass
class CalibratedExportFromExport(CalibrationOptions):
    __doc__ = CalibrationOptions.__doc__

    def loader(self) -> CalibratedExport:
        """The loader that produces this precision, with these options."""
        loader = WeightOnlyExportFromExport if self.weight_only else QdqExportFromExport
        return loader(**self.options())

    def call_impl(self) -> Path:
        return self.loader()()


calibrate_export = functional(CalibratedExportFromExport, "calibrate_export")
