"""``SquareViTAdapter``: what the families whose vision tower takes one square image size share (a CLIP or SigLIP
tower that merges between its encoder layers: LLaVA, Gemma 3): the tower's blocks and patch grid, the OIM steps over
that grid, and images preprocessed to the tower's size."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from luvc.compress.config import ResolvedLUVCConfig
from luvc.compress.cost import VisionSpec
from luvc.compress.oim import OIMStep, plan_oim
from luvc.errors import critical
from luvc.models.base import VLMAdapter

if TYPE_CHECKING:
    import torch


class SquareViTAdapter(VLMAdapter):
    """A family whose vision tower (``model.model.vision_tower``) takes ``image_size`` square images."""

    processor_size_field: ClassVar[str] = "size"  # the preprocessor_config.json field that sets the image size

    @property
    def vision_blocks(self):
        tower = self.model.model.vision_tower
        return getattr(tower, "vision_model", tower).encoder.layers

    @property
    def vision_depth(self) -> int:
        return self.model.config.vision_config.num_hidden_layers

    @property
    def grid_side(self) -> int:
        """Patches a side of an image."""
        vision = self.model.config.vision_config
        return vision.image_size // vision.patch_size

    def oim_steps(self, config: ResolvedLUVCConfig) -> dict[int, OIMStep]:
        """Block index -> the merge step after it, for the configured (square) patch grid."""
        grid = (1, self.grid_side, self.grid_side)
        return dict(zip(config.oim_layers, plan_oim([grid], config.oim_axes())))

    def preprocess_images(self, images) -> dict:
        return self.checked_pixels(self.image_processor(images=list(images), return_tensors="pt")["pixel_values"])

    def checked_pixels(self, pixels: torch.Tensor) -> dict:
        """``{"pixel_values": pixels}``, refused in one line unless they have the tower's size."""
        vision = self.model.config.vision_config
        if tuple(pixels.shape[-2:]) != (vision.image_size, vision.image_size):
            critical(
                f"The image processor made {tuple(pixels.shape[-2:])} pixels but the vision tower takes "
                f"{vision.image_size}x{vision.image_size}; fix {self.processor_size_field} in preprocessor_config.json."
            )
        return {"pixel_values": pixels}

    def tower_spec(self, projector_flops_per_unit: int, cls_token: bool = False) -> VisionSpec:
        """The cost model's spec of this tower (its widths and patch embedding), with the family's projector cost per
        LLM token and whether the tower has a CLS token."""
        vision = self.model.config.vision_config
        return VisionSpec(
            embed=vision.hidden_size,
            mlp=vision.intermediate_size,
            patch_flops_per_token=2 * vision.num_channels * vision.patch_size**2 * vision.hidden_size,
            projector_flops_per_unit=projector_flops_per_unit,
            cls_token=cls_token,
        )

    def images_key(self, inputs: dict) -> int:
        return int(inputs["pixel_values"].shape[0])  # every image has the tower's size
