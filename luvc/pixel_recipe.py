"""What an image processor does to a fitted image's 8-bit values (rescale, then normalise), as a recipe the pipeline's
device follows (``luvc.runtime.pixels``): a table of the processor's float for each byte in each channel, made by
its own ``rescale`` and ``normalize``, and the float32 arithmetic that makes the same values where it does (checked
bit for bit when the recipe is made; every family here). An export records a processor's ``ImageRules`` only where
that arithmetic holds (``recorded_rules``), so that a run makes the recipe from the rules, without the processor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from luvc.processing import ImageRules

BYTE_VALUES = 256
Layout = Literal["patches", "planes"]  # Qwen-VL's flat merge-ordered patches; (B, C, H, W)


@dataclasses.dataclass(frozen=True)
class PixelRecipe:
    """What a processor does to a fitted image's bytes: ``table[channel * 256 + byte]`` is its float for that byte
    (rescaled and normalised); ``divisor``, ``mean`` and ``std`` the float32 arithmetic that makes the same values,
    where it does (``arithmetic``: checked on the 256 values of each channel when the recipe is made); ``layout``
    the vision input's form (``patches`` with its patch, merge and temporal sizes)."""

    table: np.ndarray  # float32 (channels * 256,)
    mean: np.ndarray  # float32 (channels,)
    std: np.ndarray  # float32 (channels,)
    divisor: float
    arithmetic: bool  # ((byte / divisor) - mean) / std in float32 is the table, bit for bit
    layout: Layout
    patch: int = 0
    merge: int = 1
    temporal: int = 1

    @classmethod
    def of(cls, processor) -> PixelRecipe:
        """The recipe of ``processor`` (a ``transformers`` PIL image processor), its table made by its own
        ``rescale`` and ``normalize``; or of an export's ``ImageRules``, its table made by the arithmetic, which the
        export checked makes the processor's (``recorded_rules``)."""
        recipe = cls._arithmetic(processor)
        channels = recipe.channels
        if isinstance(processor, ImageRules):
            return dataclasses.replace(recipe, table=recipe._arithmetic_table().reshape(-1).numpy())
        values = np.broadcast_to(np.arange(BYTE_VALUES, dtype=np.uint8), (channels, 1, BYTE_VALUES)).copy()
        if getattr(processor, "do_rescale", True):
            values = processor.rescale(values, processor.rescale_factor)
        if getattr(processor, "do_normalize", True):
            values = processor.normalize(values, processor.image_mean, processor.image_std)
        table = np.ascontiguousarray(np.asarray(values, dtype=np.float32).reshape(channels, BYTE_VALUES))
        arithmetic = torch.equal(recipe._arithmetic_table(), torch.from_numpy(table))
        return dataclasses.replace(recipe, table=table.reshape(-1), arithmetic=arithmetic)

    @classmethod
    def _arithmetic(cls, processor) -> PixelRecipe:
        """The arithmetic and layout of ``processor`` (or its rules), with no table yet."""
        channels = len(getattr(processor, "image_mean", None) or (0, 0, 0))
        rescale, normalise = getattr(processor, "do_rescale", True), getattr(processor, "do_normalize", True)
        divisor = float(round(1 / processor.rescale_factor)) if rescale else 1.0
        mean = np.asarray(processor.image_mean if normalise else [0.0] * channels, dtype=np.float32)
        std = np.asarray(processor.image_std if normalise else [1.0] * channels, dtype=np.float32)
        geometry = {}
        if getattr(processor, "merge_size", None) and getattr(processor, "patch_size", None):
            temporal = int(getattr(processor, "temporal_patch_size", None) or 1)
            geometry = dict(patch=int(processor.patch_size), merge=int(processor.merge_size), temporal=temporal)
        layout: Layout = "patches" if geometry else "planes"
        return cls(np.zeros(0, dtype=np.float32), mean, std, divisor, True, layout, **geometry)

    def _arithmetic_table(self) -> torch.Tensor:
        """The arithmetic's float32 values ``(channels, 256)`` of every byte in each channel: one image of each byte
        value in every channel, through the arithmetic as a batch takes it."""
        channels = self.channels
        every_byte = torch.arange(BYTE_VALUES, dtype=torch.uint8).view(1, 1, BYTE_VALUES, 1).repeat(1, 1, 1, channels)
        made = dataclasses.replace(self, arithmetic=True).planes(every_byte, torch.from_numpy)
        return made.reshape(channels, BYTE_VALUES)

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def width(self) -> int:
        """Values per Qwen-VL patch row: channels x temporal x patch x patch."""
        return self.channels * self.temporal * self.patch * self.patch

    def planes(self, images: torch.Tensor, to_device: Callable[[np.ndarray], torch.Tensor]) -> torch.Tensor:
        """The processor's float32 values of 8-bit ``images (B, H, W, C)``, as planes ``(B, C, H, W)``."""
        if not self.arithmetic:
            offsets = torch.arange(self.channels, device=images.device) * BYTE_VALUES
            return to_device(self.table)[images.to(torch.int64) + offsets].permute(0, 3, 1, 2).contiguous()
        # the bytes laid out as planes first (a byte each), then three in-place passes; the divisor as a tensor,
        # whose division is vectorised where a Python number's is not (5x slower on a Xeon here)
        values = images.permute(0, 3, 1, 2).contiguous().to(torch.float32)
        shape = (1, self.channels, 1, 1)
        values.div_(to_device(np.asarray(self.divisor, dtype=np.float32)))
        return values.sub_(to_device(self.mean).view(shape)).div_(to_device(self.std).view(shape))


def recorded_rules(processor) -> ImageRules | None:
    """The ``ImageRules`` an export records of ``processor`` (as the runtime loads it): ``None`` where the runtime
    must load the processor itself (another backend, or bytes the float32 arithmetic would not make as it does)."""
    rules = ImageRules.of(processor)  # None for a processor of another backend
    return rules if rules is not None and PixelRecipe.of(processor).arithmetic else None
