"""Images for runs without a user image: a seeded synthetic scene, and loading (files or bytes) with clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from luvc.errors import critical


def synthetic_image(height: int = 224, width: int = 224, seed: int = 0) -> Image.Image:
    """A deterministic RGB scene: smooth gradients, a few flat rectangles with sharp edges, and mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0.5 * np.sin(x / 17 + y / 23)], -1)
    for _ in range(4):
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        image[top : top + height // 3, left : left + width // 3] = rng.random(3)
    image += rng.normal(0.0, 0.02, image.shape)
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8), mode="RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open ``path`` as RGB, with an error naming the file when it is missing or not an image."""
    path = Path(path)
    if path.is_dir():
        critical(f"{path} is a folder, not an image; pass an image file to --image (PNG or JPEG).")
    if not path.is_file():
        critical(f"Image file {path} does not exist; pass an existing file to --image.")
    return _open(path, str(path))


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode an encoded image (PNG, JPEG, ...) received as bytes; ``name`` says where it came from in errors."""
    return _open(io.BytesIO(data), name)


def _open(source, name: str) -> Image.Image:
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        reason = "not a known image format" if isinstance(error, UnidentifiedImageError) else str(error)
        critical(f"Cannot read {name} as an image ({reason}); use a PNG or JPEG file.")
