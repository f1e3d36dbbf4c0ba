"""The image processor's pixel work on the pipeline's device, from 8-bit pixels.

Once an image is fitted to a bucket (on the host, by PIL, ``luvc.runtime.fit``), the family's ``transformers`` image
processor would still convert it to float on the host, rescale and normalise it there, and lay it out for the vision
graph (Qwen-VL's merge-ordered flat patches; ``(B, C, H, W)`` tiles or planes for the others). Here the host keeps the
image as bytes (``BytePixels``) and the device does the rest: the bytes go up once (a quarter of float32's), become
the processor's floats, and reshapes and permutes make the layout.

The values are the processor's own, not a copy of its code: its ``rescale`` and ``normalize`` run once on the 256
values a byte takes, in every channel, and make a table (``luvc.pixel_recipe.PixelRecipe``); float32 arithmetic
(divide, subtract the mean, divide by the deviation: a pass each) makes the values where it gives that table bit for
bit, which is checked when the recipe is made, through the same operations (every family here); a lookup in the table
where not. An export records the processor's ``ImageRules`` where the arithmetic holds, and a maker of those needs no
processor: what is said here of the processor holds of its rules. The
geometry stays the processor's too: the fast path is taken only where the processor would leave the fitted image as
it is (the processed size is the image's own: Qwen-VL's smart resize, CLIP's shortest edge and crop, Gemma 3's fixed
size, InternVL's tile canvas, whose tiles are then slices of it and whose thumbnail PIL resizes as the processor
does). Anything else (a size the processor would resize or crop, an image that is not RGB, pan-and-scan, a processor
not known here) takes the processor itself: ``BytePixelMaker`` returns ``None`` for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from luvc.pixel_recipe import PixelRecipe
from luvc.processing import pil_backed, processed_size, resample_of, tile_canvas


@dataclasses.dataclass(frozen=True)
class BytePixels:
    """A batch's pixels as the host holds them, 8-bit ``(B, H, W, C)`` (an InternVL image's tiles and thumbnail are
    images here), the recipe that makes the vision input of them (``on``), and the fitted images' size.
    ``np.asarray`` of it is that input made on the host: the processor's ``pixel_values``."""

    images: np.ndarray  # uint8 (B, H, W, C)
    recipe: PixelRecipe
    size: tuple[int, int]  # (H, W) of the fitted images, which names their bucket (InternVL's: the tiles' canvas)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the vision input it makes."""
        count, height, width = self.images.shape[:3]
        if self.recipe.layout == "patches":
            return count * (height // self.recipe.patch) * (width // self.recipe.patch), self.recipe.width
        return count, self.recipe.channels, height, width

    def on(self, to_device: Callable[[np.ndarray], torch.Tensor]) -> torch.Tensor:
        """The processor's ``pixel_values`` as a float32 tensor, made where ``to_device`` puts the bytes."""
        recipe = self.recipe
        planes = recipe.planes(to_device(self.images), to_device)
        if recipe.layout == "planes":
            return planes
        count, channels, height, width = planes.shape
        patch, merge, temporal = recipe.patch, recipe.merge, recipe.temporal
        rows, cols = height // (patch * merge), width // (patch * merge)
        blocks = planes.reshape(count, channels, rows, merge, patch, cols, merge, patch)
        blocks = blocks.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (B, rows, cols, merge, merge, C, patch, patch)
        shape = (*blocks.shape[:6], temporal, patch, patch)
        return blocks.unsqueeze(6).expand(shape).reshape(-1, recipe.width)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = self.on(torch.from_numpy).numpy()
        return values if dtype is None else values.astype(dtype)

    @property
    def nbytes(self) -> int:
        """Bytes the host sends the device."""
        return int(self.images.nbytes)

    @classmethod
    def concatenate(cls, parts: Sequence[BytePixels]) -> BytePixels:
        """One batch of the images of ``parts`` (one recipe, one size)."""
        return cls(np.concatenate([part.images for part in parts]), parts[0].recipe, parts[0].size)


def concatenate_pixels(parts: Sequence) -> np.ndarray | BytePixels:
    """The pixels of ``parts`` (``BytePixels`` or processor arrays, all of one kind) as one batch."""
    if all(isinstance(part, BytePixels) for part in parts):
        return BytePixels.concatenate(parts)
    return np.concatenate([np.asarray(part) for part in parts])


def pixels_on(pixels: np.ndarray | BytePixels, to_device: Callable[[np.ndarray], torch.Tensor]) -> torch.Tensor:
    """The vision input of ``pixels`` on the device ``to_device`` puts arrays on."""
    return pixels.on(to_device) if isinstance(pixels, BytePixels) else to_device(np.asarray(pixels))


class BytePixelMaker:
    """``BytePixels`` for images fitted to a bucket, where ``processor`` would leave their geometry as it is."""

    def __init__(self, processor) -> None:
        self.processor = processor
        # a processor of another backend (torchvision's, where a family has no PIL form) does its own arithmetic
        self.recipe = PixelRecipe.of(processor) if pil_backed(processor) else None

    def __call__(self, images: Sequence[Image.Image]) -> BytePixels | None:
        """The images' ``BytePixels`` (an InternVL image: its tiles, then its thumbnail), or ``None`` where the
        processor itself must make their pixels."""
        sizes = {(image.height, image.width) for image in images}
        if self.recipe is None or not images or len(sizes) != 1 or any(image.mode != "RGB" for image in images):
            return None
        size = sizes.pop()
        if not self._keeps(size):
            return None
        arrays = [np.asarray(image) for image in images]
        if getattr(self.processor, "crop_to_patches", None) is not None:  # InternVL: tiles cut from the canvas
            arrays = [tile for image, array in zip(images, arrays) for tile in self._tiles(image, array)]
        return BytePixels(np.stack(arrays), self.recipe, size)

    def _keeps(self, size: tuple[int, int]) -> bool:
        """Whether the processor leaves an RGB image of ``size`` ``(H, W)`` as it is before cutting it."""
        processor = self.processor
        if getattr(processor, "do_pan_and_scan", False):
            return False
        if getattr(processor, "crop_to_patches", None) is not None:
            return tile_canvas(size, processor) == size
        if self.recipe is not None and self.recipe.layout == "patches":
            return processed_size(processor, size) == size
        if getattr(processor, "do_center_crop", False):  # CLIP: the shortest edge resized, then the centre crop
            shortest = getattr(processor.size, "shortest_edge", None)
            return shortest == min(size) and processed_size(processor, size) == size
        fixed = getattr(processor, "size", None)
        return (getattr(fixed, "height", None), getattr(fixed, "width", None)) == size or not getattr(
            processor, "do_resize", True
        )

    def _tiles(self, image: Image.Image, array: np.ndarray) -> list[np.ndarray]:
        """InternVL's tiles of a fitted image (its canvas), row by row, then its thumbnail where there are several."""
        tile_height, tile_width = self.processor.size["height"], self.processor.size["width"]
        rows, cols = array.shape[0] // tile_height, array.shape[1] // tile_width
        tiles = [
            array[row * tile_height : (row + 1) * tile_height, col * tile_width : (col + 1) * tile_width]
            for row in range(rows)
            for col in range(cols)
        ]
        if len(tiles) > 1 and getattr(self.processor, "use_thumbnail", True):
            thumbnail = image.resize((tile_width, tile_height), resample_of(self.processor))
            tiles.append(np.asarray(thumbnail))
        return tiles
