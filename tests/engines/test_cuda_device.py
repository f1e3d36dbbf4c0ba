"""The compute capability from the CUDA driver, without PyTorch."""

import ctypes

import pytest

from luvc.engines.cuda_device import DRIVER_LIBRARIES, device_capability, device_count


def _driver_present() -> bool:
    for name in DRIVER_LIBRARIES:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


@pytest.mark.skipif(_driver_present(), reason="this machine has a CUDA driver")
def test_without_a_cuda_driver_there_is_no_device():
    assert device_count() == 0
    assert device_capability() is None and device_capability(3) is None


@pytest.mark.gpu
def test_the_drivers_capability_is_the_one_pytorch_reports():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU; none here")
    assert device_count() == torch.cuda.device_count()
    for index in range(device_count()):
        assert device_capability(index) == tuple(torch.cuda.get_device_capability(index))
    assert device_capability(device_count()) is None  # one past the last device
