"""The Qwen-VL encoder's host plan: every data-dependent input of the vision forward worked out on the host.

Per stage of the encoder (before the first OIM step and after each), the grid, the rotary position ids, the
``cu_seqlens`` and (Qwen2.5-VL) the window index; per OIM step its merge indices in token order; and (Qwen3-VL) the
position-embedding interpolation taps. The encoder forward only gathers and adds, so the traced vision graph takes
the plan as inputs (the export's ``host_*.npz``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from transformers.vision_utils import (
    get_vision_cu_seqlens,
    get_vision_interpolation_indices_and_weights,
    get_vision_position_ids,
    get_vision_window_index,
)

from luvc.compress.config import ResolvedLUVCConfig
from luvc.compress.oim import OIMStep, merge_units, plan_oim_step
from luvc.errors import critical
from luvc.models.plan import PlanCache
from luvc.models.window_attention import WindowLayout


@dataclasses.dataclass(frozen=True)
class QwenVisionStage:
    """Encoder metadata between two merge steps. Tensors are in token order (window order when windowed)."""

    grid_thw: torch.Tensor  # (num_images, 3) patch grid
    rotary_ids: torch.Tensor  # (N, 2) (h, w) per patch token; float when oim_positions="mean"
    cu_seqlens: torch.Tensor | np.ndarray  # a NumPy array in the export graph (constant split sizes)
    max_seqlen: int
    cu_window_seqlens: torch.Tensor | WindowLayout | None  # a WindowLayout in the export graph
    max_window_seqlen: int | None  # None: no windows


@dataclasses.dataclass(frozen=True)
class QwenVisionPlan:
    stages: tuple[QwenVisionStage, ...]
    merges: dict[int, OIMStep]  # block index -> step, indices in token order
    window_index: torch.Tensor | None  # raster -> token order of the first stage (merge units)
    reverse_index: torch.Tensor | None  # token -> raster order of the last stage (merge units)
    full_attention_blocks: frozenset[int]
    # Qwen3-VL: the learned position table resampled to the (first stage's) grid, (N, taps) indices and weights
    position_taps: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def output_grid_thw(self) -> torch.Tensor:
        return self.stages[-1].grid_thw

    @property
    def temporal_merges(self) -> int:
        """OIM steps that merged temporal slices (each doubles the time a slice of a video spans)."""
        return sum(step.axis == "T" for step in self.merges.values())

    def stage_of_block(self, block: int) -> QwenVisionStage:
        return self.stages[sum(1 for b in self.merges if b < block)]

    def block_segments(self, depth: int) -> tuple[tuple[int, ...], ...]:
        """Attention segment lengths of every block (for the cost model)."""
        segments = []
        for block in range(depth):
            stage = self.stage_of_block(block)
            windowed = stage.cu_window_seqlens is not None and block not in self.full_attention_blocks
            cu = stage.cu_window_seqlens if windowed else stage.cu_seqlens
            if cu is None or isinstance(cu, WindowLayout):  # an export graph's copy holds layouts, not boundaries
                raise TypeError("block_segments reads a host plan's segment boundaries")
            segments.append(tuple((cu[1:] - cu[:-1]).tolist()))
        return tuple(segments)


def _window(grid_thw: torch.Tensor, config) -> tuple[torch.Tensor, torch.Tensor]:
    return get_vision_window_index(
        grid_thw,
        spatial_merge_size=config.spatial_merge_size,
        window_size=config.window_size,
        patch_size=config.patch_size,
    )


def longest_segment(cu_seqlens: torch.Tensor) -> int:
    """The longest attention segment of ``cu_seqlens``: what FlashAttention takes as ``max_seqlen`` (other attention
    implementations ignore it). Worked out here, on the host plan, rather than by a private ``transformers`` helper."""
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


def _stage(grid_thw: torch.Tensor, raster_ids: torch.Tensor, window_index, cu_window, config) -> QwenVisionStage:
    unit = config.spatial_merge_size**2
    rotary_ids = raster_ids
    if window_index is not None:
        rotary_ids = raster_ids.view(-1, unit, 2)[window_index].reshape(-1, 2)
    cu_seqlens = get_vision_cu_seqlens(grid_thw)
    return QwenVisionStage(
        grid_thw=grid_thw,
        rotary_ids=rotary_ids,
        cu_seqlens=cu_seqlens,
        max_seqlen=longest_segment(cu_seqlens),
        cu_window_seqlens=cu_window,
        max_window_seqlen=None if cu_window is None else longest_segment(cu_window),
    )


def _in_token_order(step: OIMStep, previous_window, window) -> OIMStep:
    """Re-express a raster-order merge step on tokens stored in window order (Qwen2.5-VL)."""
    if previous_window is None:
        return step
    to_token = torch.argsort(previous_window)
    return dataclasses.replace(
        step,
        index_a=to_token[step.index_a[window]],
        index_b=to_token[step.index_b[window]],
        weight_a=step.weight_a[window],
        weight_b=step.weight_b[window],
    )


def _position_taps(grid_thw: torch.Tensor, config) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Qwen3-VL's learned position embeddings resampled to ``grid_thw`` (bilinear, corners aligned, in merge-unit
    order, as upstream's encoder does): gather indices and weights. ``None`` for encoders without the table."""
    if not getattr(config, "num_position_embeddings", None):
        return None
    return get_vision_interpolation_indices_and_weights(
        grid_thw,
        num_grid_per_side=int(config.num_position_embeddings**0.5),
        mode="bilinear",
        align_corners=True,
        spatial_merge_size=config.spatial_merge_size,
    )


def plan_qwen_vision(grid_thw: torch.Tensor, config, luvc: ResolvedLUVCConfig, windowed: bool) -> QwenVisionPlan:
    """Host-side plan of the encoder under ``luvc`` (resolved) for images with patch grid ``grid_thw``."""
    grid_thw = grid_thw.detach().cpu().long()
    merge = config.spatial_merge_size
    if bool(((grid_thw[:, 1:] % merge) != 0).any()):
        critical(f"Image grid {grid_thw.tolist()} is not a multiple of spatial_merge_size={merge}.")
    unit_grids: Sequence[tuple[int, int, int]] = [(t, h // merge, w // merge) for t, h, w in grid_thw.tolist()]
    raster_ids = get_vision_position_ids(grid_thw, merge)
    window_index, cu_window = _window(grid_thw, config) if windowed else (None, None)
    first_window = window_index
    stages = [_stage(grid_thw, raster_ids, window_index, cu_window, config)]
    merges, sizes = {}, None
    for block, axis in zip(luvc.oim_layers, luvc.oim_axes()):
        step = plan_oim_step(unit_grids, sizes, axis)
        unit_grids, sizes = step.grids, step.sizes
        grid_thw = torch.tensor([(t, h * merge, w * merge) for t, h, w in unit_grids], dtype=torch.long)
        if luvc.oim_positions == "mean":
            raster_ids = merge_units(raster_ids.float().view(-1, merge * merge, 2), step).reshape(-1, 2)
        else:
            raster_ids = get_vision_position_ids(grid_thw, merge)
        previous_window = window_index
        window_index, cu_window = _window(grid_thw, config) if windowed else (None, None)
        merges[block] = _in_token_order(step, previous_window, window_index)
        stages.append(_stage(grid_thw, raster_ids, window_index, cu_window, config))
    return QwenVisionPlan(
        stages=tuple(stages),
        merges=merges,
        window_index=first_window,
        reverse_index=None if window_index is None else torch.argsort(window_index),
        full_attention_blocks=frozenset(getattr(config, "fullatt_block_indexes", None) or ()),
        position_taps=_position_taps(stages[0].grid_thw, config),
    )


def planned_qwen_vision(
    plans: PlanCache[QwenVisionPlan], grid_thw: torch.Tensor, config, luvc: ResolvedLUVCConfig, windowed: bool
) -> QwenVisionPlan:
    """``plan_qwen_vision``, once per grid and config: kept in ``plans`` (the encoder's ``luvc_plans``)."""
    key = (tuple(map(tuple, grid_thw.tolist())), luvc)
    return plans.get(key, lambda: plan_qwen_vision(grid_thw, config, luvc, windowed))
