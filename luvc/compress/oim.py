"""Orthogonal Iterative Merger (DESIGN.md section 2.1), as model-agnostic pure functions.

Tokens are *merge units* laid out per image (or video) as a (T, H, W) grid in raster order. One step merges adjacent
units ``(2i, 2i + 1)`` along one axis (W, H, or T: two temporal slices of a video) into their size-weighted mean; an
odd trailing unit is carried over unmerged, so an axis of length ``n`` becomes ``ceil(n / 2)``. Steps alternate axes.
The merge pattern is static: it depends on the grid only, never on the token values, so a step is two gathers and a
weighted sum.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

Grid = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class OIMStep:
    """One merge step over a batch of images.

    Attributes:
        index_a, index_b: ``(M,)`` indices of the two units merged into each output unit (equal for a carried unit).
        weight_a, weight_b: ``(M,)`` float weights (size-weighted mean; ``1, 0`` for a carried unit).
        grids: unit grid of each image after the step.
        sizes: ``(M,)`` number of original units each output unit covers.
    """

    axis: str
    index_a: torch.Tensor
    index_b: torch.Tensor
    weight_a: torch.Tensor
    weight_b: torch.Tensor
    grids: tuple[Grid, ...]
    sizes: torch.Tensor


MERGE_AXES = {"T": 0, "H": 1, "W": 2}  # axis name -> its dimension in a (T, H, W) grid


def merged_grid(grid: Grid, axis: str) -> Grid:
    """Unit grid ``(t, h, w)`` after one merge step along ``axis``."""
    t, h, w = grid
    merged = [t, h, w]
    merged[MERGE_AXES[axis]] = (merged[MERGE_AXES[axis]] + 1) // 2
    return merged[0], merged[1], merged[2]


def grid_after_steps(grid: Grid, axes: Sequence[str]) -> Grid:
    """Unit grid after merge steps along ``axes`` in order."""
    for axis in axes:
        grid = merged_grid(grid, axis)
    return grid


def plan_oim_step(grids: Sequence[Grid], sizes: torch.Tensor | None, axis: str) -> OIMStep:
    """Plan one merge step along ``axis`` (``"W"``, ``"H"`` or ``"T"``) for images or videos with unit ``grids`` laid
    out one after another. ``sizes`` is ``(N,)`` units covered by each input unit (``None``: all ones, a fresh grid)."""
    if axis not in MERGE_AXES:
        raise ValueError(f"axis must be one of {list(MERGE_AXES)}, got {axis!r}")
    dim = MERGE_AXES[axis]
    total = sum(t * h * w for t, h, w in grids)
    sizes = torch.ones(total, dtype=torch.float32) if sizes is None else sizes.to(torch.float32)
    firsts, seconds, offset = [], [], 0
    for t, h, w in grids:
        index = (torch.arange(t * h * w).view(t, h, w) + offset).movedim(dim, -1)  # merge along the last dim
        first, second = index[..., 0::2], index[..., 1::2]
        if first.shape[-1] > second.shape[-1]:
            second = torch.cat([second, first[..., -1:]], dim=-1)
        first, second = first.movedim(-1, dim), second.movedim(-1, dim)  # back to raster order
        firsts.append(first.reshape(-1))
        seconds.append(second.reshape(-1))
        offset += t * h * w
    index_a, index_b = torch.cat(firsts), torch.cat(seconds)
    carried = index_a == index_b
    size_a, size_b = sizes[index_a], torch.where(carried, 0.0, sizes[index_b])
    new_sizes = size_a + size_b
    return OIMStep(
        axis=axis,
        index_a=index_a,
        index_b=index_b,
        weight_a=size_a / new_sizes,
        weight_b=size_b / new_sizes,
        grids=tuple(merged_grid(g, axis) for g in grids),
        sizes=new_sizes,
    )


def merge_units(units: torch.Tensor, step: OIMStep, dim: int = 0) -> torch.Tensor:
    """Apply ``step`` to ``units`` whose dimension ``dim`` indexes merge units (trailing dims are carried, so a
    unit may hold several tokens). Returns the merged units, same dtype."""
    dim = dim % units.dim()
    shape = [1] * units.dim()
    shape[dim] = -1
    weight_a = step.weight_a.to(units.device, units.dtype).view(shape)
    weight_b = step.weight_b.to(units.device, units.dtype).view(shape)
    first = units.index_select(dim, step.index_a.to(units.device))
    second = units.index_select(dim, step.index_b.to(units.device))
    return first * weight_a + second * weight_b


def units_per_block(units: int, steps: Mapping[int, OIMStep], depth: int) -> list[int]:
    """Merge units of one image entering each of ``depth`` encoder blocks, then leaving the last, for ``units``
    before OIM and ``steps`` (block -> the step after it)."""
    counts = [units]
    for block in range(depth):
        if block in steps:
            units = int(steps[block].index_a.numel())
        counts.append(units)
    return counts


def plan_oim(grids: Sequence[Grid], axes: Sequence[str]) -> list[OIMStep]:
    """Plan consecutive merge steps along ``axes`` starting from fresh unit ``grids``."""
    steps, sizes = [], None
    for axis in axes:
        step = plan_oim_step(grids, sizes, axis)
        steps.append(step)
        grids, sizes = step.grids, step.sizes
    return steps
