"""What a family's image processor does to an image's size, computed from the processor's settings without touching
pixels: Qwen-VL's smart resize (multiples of patch x merge within its pixel limits), InternVL's tile canvas (the grid
of tiles nearest the image's aspect), CLIP's resize-and-crop to one size. The export plans buckets with it, and the
runtime fits a request's image to a bucket with it.

The two size rules are written here (``smart_resize`` and ``optimal_tile_grid``: the arithmetic of ``transformers``'
``smart_resize`` and ``get_optimal_tiled_canvas``; tests compare them over thousands of sizes), so that a run never
imports ``transformers``' image processors: their module loads its model code whenever torch is installed, about 2 s
of a start. An export records what its processor would do (``ImageRules``, in the manifest), and the runtime asks that
instead of the processor wherever it can; each function here takes either.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

PROCESSOR_FOLDER = "processor"  # where an export keeps its image processor


def load_processor(export_dir: str | Path):
    """The image processor an export saved (``transformers``' own class, from its folder)."""
    return load_image_processor(Path(export_dir) / PROCESSOR_FOLDER)


def load_image_processor(folder: str | Path):
    """The image processor saved in ``folder`` (a checkpoint's or an export's), on its PIL backend: the class its
    ``preprocessor_config.json`` names, in its PIL form. The model in PyTorch and the runtime then see the same pixels
    whether or not torchvision is installed, and releases that gate ``AutoImageProcessor`` on torchvision (5.4-5.17)
    load it too. A processor with no PIL form loads as ``AutoImageProcessor`` chooses."""
    from transformers.models.auto.image_processing_auto import (
        IMAGE_PROCESSOR_MAPPING_NAMES,
        get_image_processor_class_from_name,
    )

    config = Path(folder) / "preprocessor_config.json"
    saved = json.loads(config.read_text()).get("image_processor_type", "") if config.is_file() else ""
    saved = saved.removesuffix("Fast")  # the torchvision class's name before 5.0
    for names in IMAGE_PROCESSOR_MAPPING_NAMES.values():
        if isinstance(names, dict) and saved in names.values() and names.get("pil"):
            pil = get_image_processor_class_from_name(names["pil"])
            if pil is not None:
                return pil.from_pretrained(folder, local_files_only=True)
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(folder, local_files_only=True)


# the processor attributes the runtime reads for images (``ImageRules``), and the keys of its sizes
RULE_ATTRIBUTES = (
    "size", "crop_size", "patch_size", "merge_size", "temporal_patch_size", "crop_to_patches", "min_patches",
    "max_patches", "use_thumbnail", "do_center_crop", "do_pan_and_scan", "do_resize", "resample", "image_mean",
    "image_std", "rescale_factor", "do_rescale", "do_normalize",
)  # fmt: skip
SIZE_KEYS = ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width", "min_pixels", "max_pixels")


@dataclasses.dataclass(frozen=True)
class Size:
    """A processor's ``size`` or ``crop_size``: each key read as an attribute (``None`` where unset) or an item."""

    height: int | None = None
    width: int | None = None
    shortest_edge: int | None = None
    longest_edge: int | None = None
    max_height: int | None = None
    max_width: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None

    def __getitem__(self, key: str) -> int | None:
        return getattr(self, key)


def pil_backed(processor) -> bool:
    """Whether ``processor`` is a ``transformers`` image processor of the PIL and NumPy backend (``PilBackend``), whose
    rescale and normalise ``luvc.runtime.pixels`` reproduces (``ImageRules`` are made only of such)."""
    return isinstance(processor, ImageRules) or any(base.__name__ == "PilBackend" for base in type(processor).__mro__)


@dataclasses.dataclass(frozen=True)
class ImageRules:
    """What an export's image processor does to images, as the runtime asks it: the processor's attributes of
    ``RULE_ATTRIBUTES`` that it has (an attribute it lacks is missing here too, so ``getattr`` defaults read alike),
    read as attributes. The export records them in its manifest (``of`` the processor the runtime would load), and a
    run fits images and makes their pixels from them without loading the processor; videos and images the processor
    must resize still load it."""

    processor_type: str  # the processor's class, for the reader
    attributes: dict[str, Any]  # sizes as dicts of the keys they set

    @classmethod
    def of(cls, processor) -> ImageRules | None:
        """The rules of ``processor`` (a PIL-backed ``transformers`` image processor); ``None`` for another kind."""
        if not pil_backed(processor):
            return None
        attributes: dict[str, Any] = {}
        for name in RULE_ATTRIBUTES:
            if not hasattr(processor, name):
                continue
            value = getattr(processor, name)
            if value is not None and name in ("size", "crop_size"):
                value = {key: int(getattr(value, key)) for key in SIZE_KEYS if getattr(value, key, None) is not None}
            elif name == "resample" and value is not None:
                value = int(value)
            elif isinstance(value, tuple):
                value = list(value)
            attributes[name] = value
        return cls(type(processor).__name__, attributes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRules:
        unknown = set(data["attributes"]) - set(RULE_ATTRIBUTES)
        if unknown:
            raise KeyError(f"image_rules.attributes: {', '.join(sorted(unknown))}")
        return cls(data["processor_type"], dict(data["attributes"]))

    def __getattr__(self, name: str) -> Any:
        attributes = self.__dict__.get("attributes", {})
        if name not in attributes:
            raise AttributeError(name)
        value = attributes[name]
        return Size(**value) if isinstance(value, dict) else value


def processed_size(processor, image_size: Sequence[int]) -> tuple[int, int] | None:
    """``(H, W)`` of the pixels ``processor`` makes from an image of ``image_size`` ``(H, W)``: for InternVL the tile
    canvas it cuts, for CLIP-style processors their crop; ``None`` for a processor whose rule is not known here (the
    caller then runs it)."""
    height, width = int(image_size[0]), int(image_size[1])
    if getattr(processor, "crop_to_patches", None) is not None:  # InternVL (GotOcr2): tiles of one size
        return tile_canvas((height, width), processor)
    if getattr(processor, "merge_size", None) and getattr(processor, "patch_size", None):  # Qwen-VL
        size = processor.size
        factor = processor.patch_size * processor.merge_size
        return smart_resize(height, width, factor, size.shortest_edge, size.longest_edge)
    crop = getattr(processor, "crop_size", None)
    if getattr(processor, "do_center_crop", False) and crop is not None:  # CLIP: shortest edge, then a centre crop
        return crop.height, crop.width
    return None


def tile_canvas(image_size: Sequence[int], processor) -> tuple[int, int]:
    """The canvas ``(rows x tile, cols x tile)`` the InternVL image processor resizes an image of ``(H, W)`` to
    before cutting it into tiles."""
    tile = (processor.size["height"], processor.size["width"])
    if not getattr(processor, "crop_to_patches", False):
        return tile
    height, width = image_size
    cols, rows = optimal_tile_grid((int(height), int(width)), tile, processor.min_patches, processor.max_patches)
    return rows * tile[0], cols * tile[1]


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen-VL's processed size of an image of ``(height, width)``: each side a multiple of ``factor`` nearest its own,
    scaled (keeping the aspect) into ``[min_pixels, max_pixels]`` (``transformers``' ``smart_resize``)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    rows, cols = round(height / factor) * factor, round(width / factor) * factor
    if rows * cols > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        rows = max(factor, math.floor(height / scale / factor) * factor)
        cols = max(factor, math.floor(width / scale / factor) * factor)
    elif rows * cols < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        rows, cols = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return rows, cols


def optimal_tile_grid(
    image_size: tuple[int, int], tile: tuple[int, int], min_tiles: int, max_tiles: int
) -> tuple[int, int]:
    """InternVL's grid ``(cols, rows)`` of tiles for an image of ``(H, W)``: of the grids of ``min_tiles`` to
    ``max_tiles`` tiles (fewest tiles first), the one whose aspect is nearest the image's; on a tie, the one with more
    tiles while the image's area exceeds half of theirs (``transformers``' ``get_optimal_tiled_canvas``)."""
    grids = sorted(  # fewest tiles first, and in this order among as many (a stable sort), as transformers lists them
        [
            (cols, rows)
            for cols in range(1, max_tiles + 1)
            for rows in range(1, max_tiles + 1)
            if min_tiles <= cols * rows <= max_tiles
        ],
        key=lambda grid: grid[0] * grid[1],
    )
    height, width = image_size
    aspect, area = width / height, width * height
    best, best_difference = (1, 1), float("inf")
    for cols, rows in grids:
        difference = abs(aspect - cols / rows)
        if difference < best_difference:
            best, best_difference = (cols, rows), difference
        elif difference == best_difference and area > 0.5 * tile[0] * tile[1] * cols * rows:
            best = (cols, rows)
    return best


def resample_of(processor) -> Image.Resampling:
    """The interpolation the processor resizes with (bicubic for every supported family)."""
    return Image.Resampling(getattr(processor, "resample", None) or Image.Resampling.BICUBIC)


def fill_colour(processor) -> tuple[int, int, int]:
    """The processor's mean colour as 8-bit RGB: what padding adds, so that it normalises to zero."""
    mean = getattr(processor, "image_mean", None) or (0.5, 0.5, 0.5)
    red, green, blue = (round(255 * float(value)) for value in mean[:3])
    return red, green, blue
