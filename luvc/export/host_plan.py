"""``HostPlan``: a bucket's host arrays (its ``host_*.npz``, written by the exporter) as one typed object.

The vision graph's metadata feeds (Qwen-VL's rotary positions, window index and sequence bounds, planned on the host
per bucket), the position ids of the prompt up to the end of its visual spans, the position of the first text token
after them, and, for a video bucket whose time positions follow the frame rate (Qwen2.5-VL), the temporal slice of
each time-positioned token and the scale from seconds to positions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from luvc.videos import VideoTimes, video_time_positions

_PROMPT_KEYS = ("prompt_position_ids", "next_position", "video_time_slices", "video_time_scale", "video_time_start")


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class HostPlan:
    """The host facts of one bucket (see the module docstring)."""

    vision_metadata: dict[str, np.ndarray]
    prompt_position_ids: np.ndarray  # (R, visual_end): R = 3 for M-RoPE, else 1
    next_position: int
    video_times: VideoTimes | None = None
    visual_start: int = 0  # where the template's visual tokens start (its text before them has positions 0, 1, ...)

    def save(self, path: Path) -> None:
        """Write the plan to ``path`` (an ``.npz``), as ``load`` reads it."""
        arrays: dict[str, Any] = dict(self.vision_metadata)  # (Any: numpy's savez stubs take no dict of arrays)
        arrays["prompt_position_ids"] = self.prompt_position_ids
        arrays["next_position"] = np.array(self.next_position, dtype=np.int64)
        times = self.video_times
        if times is not None:
            arrays["video_time_slices"] = times.slices
            arrays["video_time_scale"] = np.array(times.scale, dtype=np.float32)
            if times.start is not None:
                arrays["video_time_start"] = np.array(times.start, dtype=np.int64)
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Path, visual_start: int) -> HostPlan:
        """The plan saved at ``path``; a video's time positions start at ``visual_start`` unless it says otherwise."""
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
        times = None
        if "video_time_slices" in arrays:
            start = int(arrays["video_time_start"]) if "video_time_start" in arrays else visual_start
            times = VideoTimes(start, arrays["video_time_slices"], float(arrays["video_time_scale"]))
        return cls(
            vision_metadata={key: value for key, value in arrays.items() if key not in _PROMPT_KEYS},
            prompt_position_ids=arrays["prompt_position_ids"],
            next_position=int(arrays["next_position"]),
            video_times=times,
            visual_start=visual_start,
        )

    def positions(
        self, starts: np.ndarray, length: int, seconds_per_slice: float, shifts: np.ndarray | None = None
    ) -> np.ndarray:
        """Position ids of ``length`` tokens from each row's prompt index ``starts (B,)``: ``(3, B, S)`` M-RoPE or
        ``(B, S)``; a row's visual tokens sit ``shifts[b]`` tokens after the template's (text before them counts
        0, 1, ...; the visual tokens and the text after move with them); a video's time positions follow
        ``seconds_per_slice``."""
        prompt = self.prompt_position_ids
        if self.video_times is not None:
            times = self.video_times
            start = self.visual_start if times.start is None else times.start  # None: the first visual token
            prompt = prompt.copy()
            first = int(prompt[0, start])
            prompt[0, start : start + len(times.slices)] = video_time_positions(
                first, times.slices, times.scale, seconds_per_slice
            )
        starts = np.asarray(starts, dtype=np.int64)
        shifts = np.zeros_like(starts) if shifts is None else np.asarray(shifts, dtype=np.int64)
        end = prompt.shape[1]
        text_offset = self.next_position - end  # text positions after the visuals minus their index
        index = starts[:, None] + np.arange(length)  # (B, S)
        relative = index - shifts[:, None]  # the index in the template's layout
        visual = prompt[:, np.clip(relative, 0, end - 1)] + shifts[None, :, None]  # (R, B, S)
        rows = np.where(relative < self.visual_start, index, np.where(relative < end, visual, index + text_offset))
        return rows.astype(np.int64) if rows.shape[0] == 3 else rows[0].astype(np.int64)
