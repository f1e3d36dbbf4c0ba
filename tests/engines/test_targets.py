import pytest

from luvc.engines.targets import TARGETS, get_target, target_for_capability
from luvc.errors import LuvcError


def test_unknown_target_lists_the_presets():
    with pytest.raises(LuvcError, match="Unknown target 'volta'.*orin.*hopper"):
        get_target("volta")


@pytest.mark.parametrize(("target", "precision"), [("orin", "fp32"), ("ampere", "fp8"), ("thor", "fp32")])
def test_precision_the_target_cannot_run_lists_what_it_can(target, precision):
    allowed = sorted(TARGETS[target].precisions)
    with pytest.raises(LuvcError, match=rf"cannot run {precision} engines; it runs {allowed!r}".replace("[", r"\[")):
        get_target(target).check_precision(precision)


def test_presets_cover_jetson_and_datacenter():
    assert get_target("orin").compute_capabilities == ((8, 7),) and get_target("orin").supports_dla
    assert all(get_target(name).jetson for name in ("orin", "thor"))
    assert not any(get_target(name).jetson for name in ("ampere", "ada", "hopper", "blackwell"))
    for name in ("ampere", "ada", "hopper", "blackwell"):
        get_target(name).check_precision("fp16")


def test_the_target_of_a_gpu_is_found_by_its_compute_capability():
    assert target_for_capability((9, 0)).name == "hopper"  # H100, H200
    assert target_for_capability((8, 6)).name == "ampere"  # RTX 30xx, A10
    assert target_for_capability((8, 7)).name == "orin"
    assert target_for_capability((12, 0)).name == "blackwell"
    assert target_for_capability((7, 5)) is None  # Turing: no preset
