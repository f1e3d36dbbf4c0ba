"""Videos: loading (a file through PyAV, or a folder of frames) with frame sampling, a seeded synthetic clip, and the
Qwen-VL video pixels made from the frames.

Frame sampling follows ``transformers.video_utils`` (uniform over the clip, by frame count or frames per second).
The pixels are the family's image processor's, frame by frame, stacked along time the way Qwen-VL's video processor
lays out a temporal patch (``(t * h * w, C * temporal_patch * p * p)``, ``C`` outermost): the video processors of
``transformers`` need torchvision, which the image processors do not.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from luvc.errors import critical
from luvc.images import load_image, synthetic_image
from luvc.paths import FOLDER, not_a_file

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_SAMPLED_FPS = 2.0  # Qwen-VL video processors' sampling rate when they are not told
MAX_SAMPLED_FPS = 240.0  # the most frames a second a request may sample (a rate above the video's takes every frame)
QWEN3_UNKNOWN_FPS = 24.0  # the frame rate Qwen3-VL's processor assumes for timestamps when a clip has none


@dataclasses.dataclass(frozen=True)
class Video:
    """Sampled frames of one clip (RGB, one size), the indices they had in the source and its frame rate (``None``:
    unknown, e.g. a folder of frames)."""

    frames: tuple[Image.Image, ...]
    frame_indices: tuple[int, ...]
    fps: float | None = None
    source: str = "synthetic"

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the frames."""
        return self.frames[0].height, self.frames[0].width

    @property
    def seconds_per_frame(self) -> float | None:
        """Seconds between two sampled frames (``None`` when the source frame rate is unknown)."""
        if self.fps is None or len(self.frame_indices) < 2:
            return None
        return (self.frame_indices[-1] - self.frame_indices[0]) / (len(self.frame_indices) - 1) / self.fps


Visual = Image.Image | Video  # what one placeholder of a prompt stands for
VisualRow = Visual | tuple[Visual, ...] | list[Visual]  # a prompt's visual, or its several (images, then videos)


def seconds_per_slice(video: Video, temporal_patch_size: int) -> float:
    """Seconds one temporal patch of ``video`` spans (Qwen2.5-VL's ``second_per_grid_ts``): the frame spacing times
    the patch, at the processors' default of 2 sampled frames a second when the source rate is unknown."""
    return temporal_patch_size * (video.seconds_per_frame or 1 / DEFAULT_SAMPLED_FPS)


def slice_timestamps(video: Video, temporal_patch_size: int, slices: int) -> list[float]:
    """Seconds of each of ``slices`` equal groups of ``video``'s frames (temporal slices, merged or not): the mean of
    the first and last frame time of the group, as Qwen3-VL's processor times a temporal patch (frames padded with
    the last one to whole patches; 24 frames a second when the rate is unknown, as the processor assumes)."""
    fps = video.fps or QWEN3_UNKNOWN_FPS
    indices = list(video.frame_indices)
    indices += [indices[-1]] * (-len(indices) % temporal_patch_size)
    per_slice = len(indices) // slices
    return [(indices[i * per_slice] / fps + indices[(i + 1) * per_slice - 1] / fps) / 2 for i in range(slices)]


@dataclasses.dataclass(frozen=True, eq=False)  # holds an array: compared by identity
class VideoTimes:
    """Where a video's time positions go (prompt index ``start``; ``None``: the bucket's first visual token), each
    token's temporal ``slices``, and the ``scale`` from seconds to positions (``luvc.videos.video_time_positions``)."""

    start: int | None
    slices: np.ndarray
    scale: float


def video_time_positions(start: int, slices: np.ndarray, scale: float, seconds: float) -> np.ndarray:
    """The M-RoPE time row of a video's tokens as Qwen2.5-VL computes it: ``start + floor(slice * interval)`` with
    ``interval = scale * seconds`` in float32 (``scale``: tokens per second times the temporal merges' factor;
    ``seconds``: ``seconds_per_slice``), exactly as ``get_rope_index`` rounds."""
    interval = np.float32(scale) * np.float32(seconds)
    return start + (slices.astype(np.float32) * interval).astype(np.int64)


def sample_indices(
    total: int, num_frames: int | None = None, fps: float | None = None, source_fps: float | None = None
) -> list[int]:
    """Indices of the frames to keep out of ``total``: ``num_frames`` spread evenly, or ``fps`` per second of a source
    at ``source_fps``, or all of them (``transformers.video_utils.default_sample_indices_fn``)."""
    from transformers.video_utils import VideoMetadata, default_sample_indices_fn

    if num_frames is not None and fps is not None:
        critical("Give either a frame count (--video-frames) or a frame rate (--video-fps), not both.")
    if num_frames is not None and not 1 <= num_frames <= total:
        critical(f"--video-frames {num_frames}: the video has {total} frames; sample between 1 and {total}.")
    if fps is not None and source_fps is None:
        critical("A folder of frames has no frame rate to sample by; use --video-frames N instead of --video-fps.")
    if fps is not None and (isinstance(fps, bool) or not math.isfinite(fps) or not 0 < fps <= MAX_SAMPLED_FPS):
        critical(f"--video-fps {fps}: sample a number of frames per second in (0, {MAX_SAMPLED_FPS:g}], e.g. 2.")
    if fps is not None and source_fps is not None and fps > source_fps:  # no more frames a second than the video
        fps = source_fps
    metadata = VideoMetadata(total_num_frames=total, fps=source_fps)
    indices = [int(index) for index in default_sample_indices_fn(metadata, num_frames=num_frames, fps=fps)]
    if not indices:
        critical(f"Sampling {fps} frames per second keeps no frame of a {total}-frame video; raise --video-fps.")
    return indices


def load_video(path: str | Path, num_frames: int | None = None, fps: float | None = None) -> Video:
    """Read a video file (any format PyAV decodes) or a folder of frame images (sorted by name), keeping the sampled
    frames; errors name the file and the fix."""
    path = Path(path)
    problem = not_a_file(path)
    if problem not in (None, FOLDER):
        critical(f"Video {path} {problem}; pass a video file or a folder of frames to --video.")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            critical(f"{path} holds no frames ({', '.join(FRAME_SUFFIXES)}); put the video's frames there as images.")
        not_files = [file for file in files if not file.is_file()]
        if not_files:
            critical(
                f"{not_files[0]} in the frames folder {path} is no image file (a folder, a broken link or a link that "
                "loops); remove it, or put the frame there, and pass the folder to --video again."
            )
        indices = sample_indices(len(files), num_frames, fps)
        frames = tuple(load_image(files[index]) for index in indices)
        sizes = {frame.size for frame in frames}
        if len(sizes) > 1:
            critical(f"The frames in {path} have different sizes {sorted(sizes)}; a video's frames share one size.")
        return Video(frames, tuple(indices), None, str(path))
    return _decode(path, num_frames, fps)


def load_sampled_video(path: str | Path, num_frames: int | None = None, fps: float | None = None) -> Video:
    """``load_video`` as requests sample: ``num_frames`` evenly, or ``fps`` frames a second; with neither, a file at
    Qwen-VL's default rate (``DEFAULT_SAMPLED_FPS``) and a folder of frames whole (it has no rate)."""
    if fps is None and num_frames is None and not Path(path).is_dir():
        fps = DEFAULT_SAMPLED_FPS
    return load_video(path, num_frames=num_frames, fps=fps)


def _decode(path: Path, num_frames: int | None, fps: float | None) -> Video:
    """Count the frames (demuxing packets, no decoding), sample, then decode once keeping only the sampled frames as
    images: a long clip never sits in memory whole."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0] if container.streams.video else None
            if stream is None:
                critical(f"{path} has no video stream; pass a video file (MP4, MKV, WebM, ...).")
            total = sum(1 for packet in container.demux(stream) if packet.size)
            source_fps = float(stream.average_rate) if stream.average_rate else None
        if not total:
            critical(f"{path} holds no frames; pass a video with at least one frame.")
        indices = sample_indices(total, num_frames, fps, source_fps)
        wanted, frames = set(indices), {}
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(container.streams.video[0])):
                if index in wanted:
                    frames[index] = frame.to_image()
                if index >= indices[-1]:
                    break
    except av.error.FFmpegError as error:
        critical(f"Cannot read {path} as a video ({error.strerror or error}); pass a video file PyAV decodes.")
    missing = [index for index in indices if index not in frames]
    if missing:
        critical(f"{path} decodes to fewer frames than its packets ({missing[0]} of {total}); re-encode the video.")
    return Video(tuple(frames[index] for index in indices), tuple(indices), source_fps, str(path))


def synthetic_video(frames: int, height: int = 224, width: int = 224, seed: int = 0, fps: float = 2.0) -> Video:
    """A deterministic clip: the synthetic scene of ``seed`` drifting one pixel column per frame (neighbouring frames
    are nearly equal, as in real video)."""
    scene = np.asarray(synthetic_image(height, width + frames, seed))
    clip = tuple(Image.fromarray(np.ascontiguousarray(scene[:, index : index + width])) for index in range(frames))
    return Video(clip, tuple(range(frames)), fps)


def qwen_video_pixels(
    frames: Sequence[Image.Image], image_processor, temporal_patch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``pixel_values_videos (t * h * w, C * T * p * p)`` and ``video_grid_thw (1, 3)`` of one clip, ``T`` =
    ``temporal_patch_size``: each frame processed by the image processor (which repeats an image over ``T``), then
    frame ``j * T + k`` fills temporal position ``k`` of slice ``j``. A frame count that is not a multiple of ``T``
    repeats the last frame, as the video processor does."""
    frames = list(frames)
    if not frames:
        critical("The video has no frames; pass a video with at least one frame.")
    frames += [frames[-1]] * (-len(frames) % temporal_patch_size)
    processed = image_processor(images=frames, return_tensors="np")
    grids = np.asarray(processed["image_grid_thw"])
    if len({tuple(grid) for grid in grids.tolist()}) > 1:
        critical("The frames of a video must share one size; resize them to the first frame's size.")
    units, pp = int(np.prod(grids[0])), image_processor.patch_size**2
    flat = np.asarray(processed["pixel_values"]).reshape(len(frames), units, -1, temporal_patch_size, pp)
    first = flat[:, :, :, 0]  # (F, N, C, p * p): the image processor repeated each frame over T
    slices = first.reshape(-1, temporal_patch_size, *first.shape[1:]).transpose(0, 2, 3, 1, 4)  # (t, N, C, T, pp)
    t = len(frames) // temporal_patch_size
    grid = np.array([[t, int(grids[0][1]), int(grids[0][2])]], dtype=np.int64)
    return np.ascontiguousarray(slices.reshape(t * units, -1)), grid


def qwen_videos_pixels(
    videos: Sequence[Video], image_processor, temporal_patch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A batch's ``pixel_values_videos`` (the videos one after another) and ``video_grid_thw (videos, 3)``
    (``qwen_video_pixels`` of each); the videos of a batch share one grid."""
    pixels, grids = zip(*(qwen_video_pixels(video.frames, image_processor, temporal_patch_size) for video in videos))
    shapes = sorted({tuple(grid[0].tolist()) for grid in grids})
    if len(shapes) > 1:
        critical(f"Videos of one batch must share a frame count and size; got grids {shapes}.")
    return np.concatenate(pixels), np.concatenate(grids)
