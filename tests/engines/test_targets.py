import pytest

from luvc.engines.targets import TARGETS, get_target
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
