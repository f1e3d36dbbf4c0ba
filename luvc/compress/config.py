"""``LUVCConfig``: every LUVC choice behind a named option (DESIGN.md section 2)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from luvc.compress.criteria import CRITERIA, ranks_in_encoder
from luvc.errors import critical

SPU_VARIANTS = ("spectral-residual", "channel-spectrum", "none")  # SPU's own scores (CLI --spu), or no pruning
PRUNING_CRITERIA = (*CRITERIA, "none")  # every value spu_variant takes: SPU's and the baselines' (criteria.py)
OIM_AXES = ("W", "H")  # spatial axes; "T" (adjacent temporal slices of a video) joins them with oim_temporal
OIM_POSITION_MODES = ("compact", "mean")
SPU_KEEP = ("high", "low")  # which end of SPU's scores a cut keeps
SPU_INPUTS = ("residual", "normed")  # what SPU scores: the residual stream entering the layer, or its normed input
SPU_LOWPASS = ("raster", "grid")  # spectral-residual's low-pass: along the token sequence, or over each 2-D grid
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
DEFAULT_DART_PIVOTS = 8  # per image; an image with fewer visual tokens makes every token a pivot
MAX_TILE = 4096  # tokens; GEMM tiles are 8 to 256

_SCHEDULE = "shapes the default budget schedule, which runs only where a method prunes and --budgets is not given"
_OIM = "shapes OIM's merges in the encoder, which run only where a method merges"
OPTION_PURPOSES = {  # what each knob that only some configs read is for (LUVCConfig.unread_options)
    "seed": "seeds the random criterion (--method random)",
    "dart_pivots": "sets the DART criterion's pivots (--method dart)",
    "rho": "is SPU's low-pass fraction (--method luvc or spu-only)",
    "spu_start": _SCHEDULE,
    "spu_every": _SCHEDULE,
    "budget_tile": _SCHEDULE,
    "final_zero": "ends the LLM's budgets at zero, where a method prunes",
    "oim_first_axis": _OIM,
    "oim_temporal": _OIM,
    "oim_positions": _OIM,
}

SpuVariant = Literal["spectral-residual", "channel-spectrum", "none"]


@dataclasses.dataclass(frozen=True, eq=False)
class LUVCConfig:
    """What LUVC does to a model. Every field defaults to ``None``, resolved by :meth:`resolve` into a
    :class:`ResolvedLUVCConfig` (every field filled in but ``budgets``). Two configs with equal fields are equal (and
    hash alike), resolved or not.

    Attributes:
        oim_layers: encoder blocks *after which* one OIM merge step runs. ``()`` disables OIM.
            Default: one step after block ``depth // 2 - 1`` (the middle of the encoder).
        oim_first_axis: axis of the first merge step, ``"W"`` or ``"H"`` (or ``"T"`` with ``oim_temporal``); later
            steps alternate. Default ``"W"``.
        oim_temporal: also merge adjacent temporal slices of a video: the steps cycle through W, H and T from
            ``oim_first_axis`` (which may then be ``"T"``). Images have one slice: a T step leaves them as they are.
            Default off.
        oim_positions: encoder rotary ids after a merge: ``"compact"`` (coordinates of the new grid, default)
            or ``"mean"`` (size-weighted mean of the merged coordinates).
        spu_variant: the pruning unit's criterion: ``"spectral-residual"`` (default), ``"channel-spectrum"``, ``"none"``
            (no pruning), or a baseline criterion for comparisons (``luvc.compress.criteria``: ``"random"``,
            ``"l2-norm"``, ``"dart"``, ``"fastv"``, ``"visionzip"``).
        rho: low-pass fraction: the lowest ``ceil(rho * n)`` frequencies are kept by the filter. Default 0.25.
        spu_start: first decoder layer whose input is pruned by the default schedule. Default 2.
        spu_every: the default schedule prunes every ``spu_every`` layers. Default 1.
        budgets: explicit visual-token budgets entering each decoder layer (non-increasing). A list shorter
            than the layer count is continued with its last value. Default: linear decay (see budgets.py).
        final_zero: the last decoder layer sees no visual token. Default ``True``.
        budget_tile: the default schedule rounds each layer's budget to the nearest multiple of this many tokens (a
            GPU's GEMM tile: 8 or 64), so budgets change, and SPU cuts, only every tile: fewer cuts, each one a set of
            nodes a GPU launches. Rounding may end the visual tokens a layer or two early. Default 1 (no rounding);
            explicit ``budgets`` are taken as given.
        seed: seed of the ``"random"`` criterion. Default 0.
        dart_pivots: pivot tokens of the ``"dart"`` criterion (per image). Default 8.
        spu_keep: which tokens an SPU cut keeps: ``"high"`` scores (default) or ``"low"`` (the reverse order).
        spu_input: what SPU scores: ``"residual"``, the residual stream entering the layer (default), or ``"normed"``,
            the layer's normalised input (its ``input_layernorm``), which attention and the MLP read.
        spu_lowpass: the spectral-residual low-pass: ``"raster"`` (default), the lowest DCT frequencies along the
            token sequence in raster order; or ``"grid"``, a separable 2-D low-pass over each image's (or frame's, or
            tile's) token grid, ``ceil(sqrt(rho) * rows)`` by ``ceil(sqrt(rho) * cols)`` frequencies, with pruned
            tokens counted as zeros.
    """

    oim_layers: tuple[int, ...] | None = None
    oim_first_axis: str | None = None
    oim_temporal: bool | None = None
    oim_positions: str | None = None
    spu_variant: str | None = None
    rho: float | None = None
    spu_start: int | None = None
    spu_every: int | None = None
    budgets: tuple[int, ...] | None = None
    final_zero: bool | None = None
    budget_tile: int | None = None
    seed: int | None = None
    dart_pivots: int | None = None
    spu_keep: str | None = None
    spu_input: str | None = None
    spu_lowpass: str | None = None

    def __post_init__(self) -> None:
        """Refuse what is wrong whatever the model: out-of-range knobs, budgets a config without pruning ignores."""
        if self.rho is not None and not _number_between(self.rho, 0.0, 1.0):
            critical(f"rho must be in (0, 1), got {self.rho} (CLI: --option rho=0.25).")
        if self.seed is not None and not _integer_in(self.seed, 0, MAX_SEED):
            critical(f"seed must be an integer between 0 and {MAX_SEED}, got {self.seed} (CLI: --option seed=0).")
        if self.dart_pivots is not None and not _integer_in(self.dart_pivots, 1):
            critical(f"dart_pivots must be an integer >= 1, got {self.dart_pivots} (CLI: --option dart_pivots=8).")
        if self.spu_every is not None and not _integer_in(self.spu_every, 1):
            critical(f"spu_every must be an integer >= 1, got {self.spu_every} (CLI: --option spu_every=1).")
        if self.budget_tile is not None and not _integer_in(self.budget_tile, 1, MAX_TILE):
            critical(
                f"budget_tile must be an integer between 1 and {MAX_TILE}, got {self.budget_tile} "
                "(CLI: --option budget_tile=64)."
            )
        if self.budget_tile not in (None, 1) and self.budgets is not None:
            critical(
                f"budget_tile={self.budget_tile} rounds the default schedule, but explicit budgets "
                f"{list(self.budgets)} are given; round them yourself, or drop --budgets."
            )
        if self.spu_start is not None and not _integer_in(self.spu_start, 0):
            critical(f"spu_start must be an integer >= 0, got {self.spu_start} (CLI: --option spu_start=2).")
        if self.spu_variant == "none" and self.budgets is not None:
            critical(
                f"spu_variant 'none' prunes nothing, so budgets {list(self.budgets)} would be ignored; drop --budgets "
                "or choose a pruning --spu."
            )

    def _fields(self) -> tuple:
        return tuple(getattr(self, field.name) for field in dataclasses.fields(self))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LUVCConfig):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def unread_options(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` (fields a user set, e.g. with ``--option``) that this config as built (unresolved) never
        reads (``OPTION_PURPOSES`` says what each is for): a knob of another criterion, of the budget schedule when
        budgets are given or nothing is pruned, or of OIM when nothing merges. (``resolve`` checks SPU's scoring
        knobs.)"""
        variant = self.spu_variant or SPU_VARIANTS[0]
        scheduled = variant != "none" and self.budgets is None
        merges = self.oim_layers != () and not ranks_in_encoder(variant)
        read = {
            "seed": variant == "random",
            "dart_pivots": variant == "dart",
            "rho": variant in SPU_VARIANTS[:-1],
            "spu_start": scheduled,
            "spu_every": scheduled,
            "budget_tile": scheduled,
            "final_zero": variant != "none",
            "oim_first_axis": merges,
            "oim_temporal": merges,
            "oim_positions": merges,
        }
        return [name for name in names if not read.get(name, True)]

    @classmethod
    def off(cls) -> LUVCConfig:
        """A config that changes nothing: no merge, no pruning (the baseline through the same code path)."""
        return cls(oim_layers=(), spu_variant="none")

    @property
    def is_off(self) -> bool:
        return self.oim_layers == () and self.spu_variant == "none"

    def resolve(self, vision_depth: int, num_layers: int) -> ResolvedLUVCConfig:
        """Fill defaults for a model with ``vision_depth`` encoder blocks and ``num_layers`` decoder layers,
        and validate everything that does not depend on the image size."""
        oim_layers = self.oim_layers
        if oim_layers is None:  # a criterion that selects at the encoder output replaces the merge
            oim_layers = () if ranks_in_encoder(self.spu_variant) else (max(vision_depth // 2 - 1, 0),)
        oim_layers = tuple(int(i) for i in oim_layers)
        bad = [i for i in oim_layers if not 0 <= i < vision_depth]
        if bad:
            critical(
                f"oim_layers {list(bad)} are outside the encoder's blocks 0..{vision_depth - 1}; "
                f"choose block indices below {vision_depth} (CLI: --oim-layers)."
            )
        if len(set(oim_layers)) != len(oim_layers):
            critical(f"oim_layers {list(oim_layers)} repeats a block; each block merges at most once.")
        resolved = ResolvedLUVCConfig(
            oim_layers=tuple(sorted(oim_layers)),
            oim_first_axis=_choice(
                "oim_first_axis", self.oim_first_axis, (*OIM_AXES, "T") if self.oim_temporal else OIM_AXES, "W"
            ),
            oim_temporal=bool(self.oim_temporal),
            oim_positions=_choice("oim_positions", self.oim_positions, OIM_POSITION_MODES, "compact"),
            spu_variant=_choice("spu_variant", self.spu_variant, PRUNING_CRITERIA, "spectral-residual"),
            rho=0.25 if self.rho is None else float(self.rho),
            spu_start=2 if self.spu_start is None else int(self.spu_start),
            spu_every=1 if self.spu_every is None else int(self.spu_every),
            budgets=None if self.budgets is None else tuple(int(b) for b in self.budgets),
            final_zero=True if self.final_zero is None else bool(self.final_zero),
            budget_tile=1 if self.budget_tile is None else int(self.budget_tile),
            seed=0 if self.seed is None else int(self.seed),
            dart_pivots=DEFAULT_DART_PIVOTS if self.dart_pivots is None else int(self.dart_pivots),
            spu_keep=_choice("spu_keep", self.spu_keep, SPU_KEEP, "high"),
            spu_input=_choice("spu_input", self.spu_input, SPU_INPUTS, "residual"),
            spu_lowpass=_choice("spu_lowpass", self.spu_lowpass, SPU_LOWPASS, "raster"),
        )
        spu_knobs = {
            "spu_keep": resolved.spu_keep != "high",
            "spu_input": resolved.spu_input != "residual",
            "spu_lowpass": resolved.spu_lowpass != "raster",
        }
        if resolved.spu_variant not in SPU_VARIANTS[:-1] and any(spu_knobs.values()):
            changed = [name for name, set_ in spu_knobs.items() if set_]
            critical(
                f"{', '.join(changed)} change how SPU scores tokens, but the criterion is {resolved.spu_variant!r}; "
                "use them with --spu spectral-residual or channel-spectrum (methods luvc, spu-only)."
            )
        if resolved.spu_lowpass == "grid" and resolved.spu_variant != "spectral-residual":
            critical("spu_lowpass=grid is the spectral-residual low-pass; use it with --spu spectral-residual.")
        uses_schedule = resolved.spu_variant != "none" and resolved.budgets is None
        if uses_schedule and not 0 <= resolved.spu_start < num_layers:
            critical(
                f"spu_start={resolved.spu_start} does not fit a model with {num_layers} decoder layers; "
                f"use 0..{num_layers - 1} (CLI: --option spu_start={min(2, num_layers - 1)})."
            )
        if ranks_in_encoder(resolved.spu_variant) and resolved.oim_layers:
            critical(
                f"{resolved.spu_variant} selects tokens at the encoder output instead of merging them; it takes no OIM "
                "steps (CLI: --oim-layers none, or --method visionzip)."
            )
        return resolved

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict) -> LUVCConfig:
        """The config of ``to_dict`` (as a manifest stores it: lists for tuples)."""
        tuples = {"oim_layers", "budgets"}
        fields: dict[str, Any] = {k: tuple(v) if k in tuples and v is not None else v for k, v in data.items()}
        return LUVCConfig(**fields)


@dataclasses.dataclass(frozen=True, eq=False)
class ResolvedLUVCConfig(LUVCConfig):
    """A config with its defaults filled in for one model (``LUVCConfig.resolve``): what the models, the budget
    planner and the cost model read. ``budgets`` stays ``None`` where the default schedule computes them."""

    oim_layers: tuple[int, ...]
    oim_first_axis: str
    oim_temporal: bool
    oim_positions: str
    spu_variant: str
    rho: float
    spu_start: int
    spu_every: int
    budgets: tuple[int, ...] | None
    final_zero: bool
    budget_tile: int
    seed: int
    dart_pivots: int
    spu_keep: str
    spu_input: str
    spu_lowpass: str

    def oim_axes(self) -> tuple[str, ...]:
        """The axis of each merge step: W and H alternate from ``oim_first_axis``; with ``oim_temporal`` the steps
        cycle through W, H, T from it."""
        cycle = (*OIM_AXES, "T") if self.oim_temporal else OIM_AXES
        first = cycle.index(self.oim_first_axis)
        return tuple(cycle[(first + i) % len(cycle)] for i in range(len(self.oim_layers)))


def _integer_in(value: object, low: int, high: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value and (high is None or value <= high)


def _number_between(value: object, low: float, high: float) -> bool:
    """A finite real ``value`` strictly between ``low`` and ``high``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return math.isfinite(value) and low < value < high


def _choice(name: str, value: str | None, allowed: Sequence[str], default: str) -> str:
    if value is None:
        return default
    if value not in allowed:
        critical(f"{name}={value!r} is not one of {list(allowed)}.")
    return value
