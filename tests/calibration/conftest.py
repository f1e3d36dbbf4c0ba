import pytest

from luvc.calibration import calibrate_export
from tests.conftest import made_once


@pytest.fixture(scope="session")
def calibrated(exports, tmp_path_factory):
    """``calibrated(family, precision, method, seed)``: a calibrated export of the default fp32 export, made once per
    test run."""
    made = {}

    def get(family: str, precision: str = "int8", method: str | None = None, seed: int | None = None):
        key = (family, precision, method, seed)
        if key not in made:
            made[key] = made_once(
                tmp_path_factory,
                f"calibrated/{family}-{precision}-{method}-{seed}",
                lambda out: calibrate_export(
                    exports(family), out, precision=precision, method=method, seed=seed, show_progress=False
                ),
            )
        return made[key]

    return get
