"""TensorRT 10 / JetPack 6 legacy INT8 path: the calibration cache that ``IInt8EntropyCalibrator2`` reads.

The format is text: a header ``TRT-<version>-EntropyCalibration2``, then one ``<tensor name>: <scale>`` line per
tensor, the scale (``amax / 127``) written as the 8 hex digits of its big-endian float32. ``trtexec --int8
--calib=FILE`` or a calibrator whose ``read_calibration_cache`` returns the bytes use it on the fp32 graph.
"""

from __future__ import annotations

import struct
from pathlib import Path

from luvc.errors import critical

ALGORITHM = "EntropyCalibration2"
DEFAULT_VERSION = 100300  # TensorRT 10.3 (JetPack 6): major * 10000 + minor * 100 + patch


def format_calibration_cache(scales: dict[str, float], version: int | None = None) -> str:
    """The cache text for per-tensor INT8 ``scales``."""
    lines = [f"TRT-{DEFAULT_VERSION if version is None else version}-{ALGORITHM}"]
    lines += [f"{name}: {struct.pack('>f', scale).hex()}" for name, scale in sorted(scales.items())]
    return "\n".join(lines) + "\n"


def write_calibration_cache(path: str | Path, scales: dict[str, float], version: int | None = None) -> Path:
    """Write the cache for ``scales`` to ``path``."""
    path = Path(path)
    path.write_text(format_calibration_cache(scales, version))
    return path


def read_calibration_cache(path: str | Path) -> tuple[str, dict[str, float]]:
    """``(header, scales)`` of a cache file, with an error naming the line that does not parse."""
    path = Path(path)
    if not path.is_file():
        critical(f"Calibration cache {path} does not exist; run `luvc-export calibrate --precision int8` first.")
    header, *lines = path.read_text().splitlines()
    if not header.startswith("TRT-") or not header.endswith(ALGORITHM):
        critical(f"{path} starts with {header!r}, not a TensorRT {ALGORITHM} cache header.")
    scales = {}
    for number, line in enumerate(lines, start=2):
        name, _, value = line.rpartition(": ")
        try:
            scales[name] = struct.unpack(">f", bytes.fromhex(value))[0]
        except ValueError:
            critical(f"{path}:{number}: {line!r} is not '<tensor>: <8 hex digits>'.")
    return header, scales
