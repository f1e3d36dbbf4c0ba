import pytest

from luvc.parity import check_parity


@pytest.fixture(scope="session")
def parity_of(exports):
    """``parity_of(family, precision)``: parity results of a default export on ONNX Runtime and OpenVINO, computed once
    per session."""
    made = {}

    def get(family: str, precision: str = "fp32"):
        if (family, precision) not in made:
            made[(family, precision)] = check_parity(exports(family, precision), show_progress=False, openvino=True)
        return made[(family, precision)]

    return get
