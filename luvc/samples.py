"""Image + prompt samples for parity checks and calibration: a seeded synthetic set, or a folder of images.

A folder holds images (``*.png``, ``*.jpg``, ``*.jpeg``, ``*.bmp``, ``*.webp``, read in name order) and optionally
``prompts.txt`` with one prompt per line, used in turn (or a prompts file given separately). Its images keep their
size: the runtime's fit policy (``luvc.runtime.fit``) maps each onto a bucket, for parity before PyTorch sees it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from luvc.errors import critical
from luvc.images import load_image, synthetic_image
from luvc.paths import not_a_file
from luvc.videos import Video, synthetic_video

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_PROMPTS = (
    "Describe this image.",
    "What is in this picture?",
    "What colors do you see?",
    "Where is the brightest region?",
)


@dataclasses.dataclass
class Sample:
    """One request: an RGB image (or a video, or an image and a video), a prompt, and a name for reports."""

    name: str
    image: Image.Image | Video | tuple[Image.Image, Video]
    prompt: str

    @property
    def image_size(self) -> tuple:
        """``(H, W)``, a video's ``(frames, H, W)``, or an image and a video's ``((H, W), (frames, H, W))``."""
        if isinstance(self.image, tuple):
            return tuple(Sample(self.name, part, self.prompt).image_size for part in self.image)
        if isinstance(self.image, Video):
            return (len(self.image.frames), *self.image.size)
        return self.image.height, self.image.width


def synthetic_samples(
    image_sizes: Sequence[tuple[int, ...]], count: int | None = None, seed: int | None = None
) -> list[Sample]:
    """``count`` (default 4) seeded synthetic scenes, cycling over ``image_sizes`` (a video bucket's
    ``(frames, H, W)`` gives a drifting synthetic clip) and the default prompts."""
    count = 4 if count is None else count
    seed = 0 if seed is None else seed
    if count < 1:
        critical(f"Asked for {count} synthetic samples; ask for at least 1 (--num-samples).")
    samples = []
    for index in range(count):
        image = synthetic_visual(image_sizes[index % len(image_sizes)], seed + index)
        samples.append(Sample(f"synthetic-{index}", image, DEFAULT_PROMPTS[index % len(DEFAULT_PROMPTS)]))
    return samples


def synthetic_visual(size: tuple, seed: int) -> Image.Image | Video | tuple[Image.Image, Video]:
    """A seeded synthetic image of ``(H, W)``, clip of ``(frames, H, W)``, or image and clip of a mixed size."""
    if isinstance(size[0], tuple):
        (height, width), (frames, video_height, video_width) = size
        return synthetic_image(height, width, seed=seed), synthetic_video(frames, video_height, video_width, seed=seed)
    *frames, height, width = size
    return synthetic_video(frames[0], height, width, seed=seed) if frames else synthetic_image(height, width, seed=seed)


def read_prompts(path: Path) -> list[str]:
    """Non-empty lines of a prompts file."""
    problem = not_a_file(path)
    if problem is not None:
        critical(f"Prompts file {path} {problem}; pass a text file with one prompt per line.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        critical(
            f"Prompts file {path} is not UTF-8 text (byte {error.object[error.start : error.start + 1]!r} at offset "
            f"{error.start}); save it as UTF-8."
        )
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        critical(f"Prompts file {path} holds no prompt; write one prompt per line.")
    return prompts


def folder_samples(
    folder: str | Path, prompts_file: str | Path | None = None, count: int | None = None
) -> list[Sample]:
    """Samples from the images of ``folder`` (at most ``count``), at their own size."""
    folder = Path(folder)
    if not folder.is_dir():
        critical(f"Data folder {folder} does not exist; pass a folder of images (--data).")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        critical(
            f"Data folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)}); add images or leave out --data "
            "to use the built-in synthetic set."
        )
    if count is not None:
        paths = paths[:count]
    prompts_path = Path(prompts_file) if prompts_file is not None else folder / "prompts.txt"
    prompts = read_prompts(prompts_path) if prompts_file is not None or prompts_path.is_file() else DEFAULT_PROMPTS
    samples = []
    for index, path in enumerate(paths):
        samples.append(Sample(path.name, load_image(path), prompts[index % len(prompts)]))
    return samples
