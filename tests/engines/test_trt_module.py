"""Which TensorRT is present and what its version means for the build path."""

import types

import pytest

from luvc.engines.trt_module import TensorRT, import_tensorrt
from luvc.errors import LuvcError


@pytest.mark.parametrize(
    ("name", "version", "strongly_typed", "tensor_scatter"),
    [
        ("tensorrt", "10.3.0", False, False),  # JetPack 6
        ("tensorrt", "10.15.1", False, True),
        ("tensorrt", "11.1.0", True, True),
        ("tensorrt_rtx", "1.7.1.116", True, True),
    ],
)
def test_version_facts(name, version, strongly_typed, tensor_scatter):
    tensorrt = TensorRT(types.ModuleType(name), name, version)
    assert (tensorrt.strongly_typed, tensorrt.parses_tensor_scatter) == (strongly_typed, tensor_scatter)
    assert tensorrt.describe() == f"{name} {version}"


def test_the_installed_module_and_an_unknown_name():
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")
    assert import_tensorrt("tensorrt_rtx").is_rtx
    with pytest.raises(LuvcError, match="Unknown TensorRT module 'tensorflow'"):
        import_tensorrt("tensorflow")
