"""Target presets: which GPUs an engine is for, which precisions they run, and builder limits."""

from __future__ import annotations

import dataclasses

from luvc.errors import critical

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Target:
    """A deployment target. ``compute_capabilities``: the SM versions it covers; ``jetson``: built on the device."""

    name: str
    description: str
    compute_capabilities: tuple[tuple[int, int], ...]
    precisions: frozenset[str]
    optimization_level: int = 3
    workspace_bytes: int | None = None  # None: TensorRT's default (the device memory)
    jetson: bool = False
    supports_dla: bool = False
    supports_hardware_compatibility: bool = False

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            critical(
                f"Target {self.name} ({self.description}) cannot run {precision} engines; it runs "
                f"{sorted(self.precisions)}. Re-export with --precision fp16 (or calibrate to int8)."
            )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["precisions"] = sorted(self.precisions)
        data["compute_capabilities"] = [f"{major}.{minor}" for major, minor in self.compute_capabilities]
        return data


_JETSON_ORIN = frozenset({"fp16", "int8", "int8w", "int4"})
_JETSON_THOR = _JETSON_ORIN | {"fp8"}
_AMPERE = _JETSON_ORIN | {"fp32"}
_FP8_GPUS = _AMPERE | {"fp8"}


def _datacenter(name: str, description: str, sms: tuple, precisions: frozenset, level: int = 3) -> Target:
    """A discrete GPU preset: TensorRT's default workspace, hardware-compatible engines allowed."""
    return Target(name, description, sms, precisions, optimization_level=level, supports_hardware_compatibility=True)


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target(
            "orin",
            "Jetson AGX/NX Orin, SM 8.7, JetPack 6 (TensorRT 10)",
            ((8, 7),),
            _JETSON_ORIN,
            workspace_bytes=1 * GiB,
            jetson=True,
            supports_dla=True,
        ),
        Target(
            "thor", "Jetson Thor, SM 11.0, JetPack 7", ((11, 0),), _JETSON_THOR, workspace_bytes=4 * GiB, jetson=True
        ),
        _datacenter("ampere", "A100/A10/A30/RTX 30xx, SM 8.0/8.6", ((8, 0), (8, 6)), _AMPERE),
        _datacenter("ada", "L4/L40S/RTX 40xx, SM 8.9", ((8, 9),), _FP8_GPUS),
        _datacenter("hopper", "H100/H200, SM 9.0", ((9, 0),), _FP8_GPUS, level=4),
        _datacenter("blackwell", "B200/GB200 SM 10.0, RTX 50xx SM 12.0", ((10, 0), (12, 0)), _FP8_GPUS, level=4),
    )
}


def target_for_capability(capability: tuple[int, int]) -> Target | None:
    """The preset whose GPUs have compute ``capability`` (``torch.cuda.get_device_capability()``); ``None`` if none."""
    return next((t for t in TARGETS.values() if tuple(capability) in t.compute_capabilities), None)


def get_target(name: str) -> Target:
    """The preset called ``name``; an error listing the presets otherwise."""
    if name not in TARGETS:
        listing = "; ".join(f"{t.name} ({t.description})" for t in TARGETS.values())
        critical(f"Unknown target {name!r}. Targets: {listing}.")
    return TARGETS[name]
