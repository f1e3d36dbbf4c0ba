"""What a family's image processor does to an image's size, computed from the processor's settings without touching
pixels: Qwen-VL's smart resize (multiples of patch x merge within its pixel limits), InternVL's tile canvas (the grid
of tiles nearest the image's aspect), CLIP's resize-and-crop to one size. The export plans buckets with it, and the
runtime fits a request's image to a bucket with it.

Each rule is the processor's own function (``smart_resize``, ``get_optimal_tiled_canvas``), imported when first used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

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


def processed_size(processor, image_size: Sequence[int]) -> tuple[int, int] | None:
    """``(H, W)`` of the pixels ``processor`` makes from an image of ``image_size`` ``(H, W)``: for InternVL the tile
    canvas it cuts, for CLIP-style processors their crop; ``None`` for a processor whose rule is not known here (the
    caller then runs it)."""
    height, width = int(image_size[0]), int(image_size[1])
    if getattr(processor, "crop_to_patches", None) is not None:  # InternVL (GotOcr2): tiles of one size
        return tile_canvas((height, width), processor)
    if getattr(processor, "merge_size", None) and getattr(processor, "patch_size", None):  # Qwen-VL
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        size = processor.size
        factor = processor.patch_size * processor.merge_size
        return tuple(smart_resize(height, width, factor, size.shortest_edge, size.longest_edge))
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
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    cols, rows = get_optimal_tiled_canvas(tuple(image_size), tile, processor.min_patches, processor.max_patches)
    return rows * tile[0], cols * tile[1]


def resample_of(processor) -> Image.Resampling:
    """The interpolation the processor resizes with (bicubic for every supported family)."""
    return Image.Resampling(getattr(processor, "resample", None) or Image.Resampling.BICUBIC)


def fill_colour(processor) -> tuple[int, int, int]:
    """The processor's mean colour as 8-bit RGB: what padding adds, so that it normalises to zero."""
    mean = getattr(processor, "image_mean", None) or (0.5, 0.5, 0.5)
    red, green, blue = (round(255 * float(value)) for value in mean[:3])
    return red, green, blue
