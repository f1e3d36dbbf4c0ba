"""``VLMAdapter``: what every family adapter provides, and the shared LUVC wiring."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, ClassVar, TypeVar, cast

import torch
from PIL import Image
from torch import nn
from transformers import PreTrainedModel

from luvc.compress.budgets import BudgetPlan
from luvc.compress.config import LUVCConfig, ResolvedLUVCConfig
from luvc.compress.cost import CostReport, LlmSpec, VisionSpec, estimate_cost
from luvc.compress.oim import OIMStep, merge_units
from luvc.errors import critical
from luvc.models.cache import linear_layers
from luvc.models.decoder import GRID_REFUSAL, install_spu_scopes
from luvc.models.hf_generate import luvc_generation_class
from luvc.models.plan import LUVC_BUDGET_PLANS, PlanCache, RequestPlan, VisionTrace, planned_budgets, plans_on
from luvc.models.scope import Scope
from luvc.prompt import PromptTemplate, chat_template_of, template_for
from luvc.videos import Video, VideoTimes, Visual, VisualRow

Patched = TypeVar("Patched")
FP16_MAX = float(torch.finfo(torch.float16).max)


def check_fp16_range(model: nn.Module, origin: str) -> None:
    """Refuse a model whose weights do not fit float16 (a bf16 or fp32 checkpoint cast to fp16 overflows to inf),
    naming the first such tensor; ``origin`` says what the weights were cast from."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        # in chunks: the check works in float32, and a whole embedding table at float32 is a second model's worth
        chunks = tensor.detach().reshape(-1).split(1 << 22) if tensor.dtype == torch.float16 else ()
        if not all(bool(torch.isfinite(chunk).all()) for chunk in chunks):
            critical(
                f"Weight {name} does not fit float16 (|x| > {FP16_MAX:.0f} after the cast from {origin}); export "
                "with --precision fp32 (fp16 graphs cannot hold it)."
            )


def swap_class(module: nn.Module, luvc_cls: type[Patched]) -> Patched:
    """Give ``module`` the LUVC subclass of its class (ToMe-style); parameters and state_dict keys stay. Returns the
    module, now of that class."""
    if not isinstance(module, luvc_cls):
        if not issubclass(luvc_cls, type(module)):
            raise TypeError(f"{luvc_cls.__name__} does not extend {type(module).__name__}")
        module.__class__ = luvc_cls
    assert isinstance(module, luvc_cls)
    return module


def patch_modules(config: ResolvedLUVCConfig, language_model: nn.Module, *pairs: tuple[nn.Module, type[Any]]) -> None:
    """The patch every family makes: each module of ``pairs`` gets its LUVC subclass and ``config``, and
    ``language_model`` one SPU scope per decoder layer."""
    for module, luvc_cls in pairs:
        swap_class(module, luvc_cls).luvc_config = config
    install_spu_scopes(language_model)


def patch_oim_layers(layers: Sequence[nn.Module], luvc_cls: type[Any], steps: dict[int, OIMStep], units: int) -> None:
    """Encoder layers of a family that merges between layers (CLIP, InternViT): each gets its LUVC subclass, its OIM
    step (``None`` where none runs after it), the merge units entering it (``units`` before the first step) and an
    OIM scope."""
    for index, layer in enumerate(layers):
        patched = swap_class(layer, luvc_cls)
        patched.luvc_step, patched.luvc_units_in = steps.get(index), units
        if not hasattr(patched, "luvc_oim"):
            patched.luvc_oim = Scope(merge_units)
        if index in steps:
            units = int(steps[index].index_a.numel())


class VLMAdapter:
    """Where LUVC hooks into one VLM family. One subclass per family, registered by architecture name.

    An adapter holds the model, its tokenizer and image processor, and the resolved ``LUVCConfig``.
    """

    architecture: ClassVar[str]
    image_placeholder: ClassVar[str]
    video_placeholder: ClassVar[str | None] = None  # families that take videos (Qwen-VL)
    video_frame_template: ClassVar[str | None] = None  # a video's text per temporal slice (``video_text``)
    visual_separator: ClassVar[str | None] = None  # between two images or videos of one prompt (Qwen-VL)
    video_unsupported: ClassVar[str] = (
        "LUVC takes videos for the Qwen-VL families only (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5)."
    )
    builtin_template: ClassVar[str]  # the family's built-in template, with {image} and {prompt}
    builtin_chat_template: ClassVar[str | None] = None  # its conversations (luvc.prompt.simple_chat_template)
    position_rows: ClassVar[int] = 1  # rows of LLM position ids: 3 for M-RoPE
    processor_only_keys: ClassVar[tuple[str, ...]] = ()  # processor outputs that plan, but the model does not take
    export_refusal: ClassVar[str | None] = None  # why this family does not export yet (it runs in PyTorch only)
    takes_pan_and_scan: ClassVar[bool] = False  # its processor can add crops of a wide or tall image (Gemma 3)

    def __init__(self, model: PreTrainedModel, tokenizer: Any, image_processor: Any, name: str | None = None) -> None:
        self.model: PreTrainedModel = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.name = name or type(model).__name__
        self._pan_and_scan = False
        self.luvc_config = LUVCConfig.off().resolve(self.vision_depth, self.num_layers)
        self._template: PromptTemplate | None = None
        self._plans: PlanCache[RequestPlan] = PlanCache()

    # -- geometry -------------------------------------------------------------------------------------------
    @property
    def vision_depth(self) -> int:
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return self.model.config.text_config.num_hidden_layers

    @property
    def linear_layers(self) -> frozenset[int]:
        """The language model's linear-attention layers (a hybrid model's, Qwen3.5): they keep a convolution state and
        a recurrent state instead of keys and values."""
        return linear_layers(self.model.config.text_config)

    @property
    def attention_window(self) -> int | None:
        """The language model's sliding window: the positions a sliding layer's token sees (Gemma 3); ``None``: no
        sliding layers."""
        return None

    @property
    def sliding_layers(self) -> tuple[int, ...]:
        """The language model's layers that attend over ``attention_window`` positions only (none without one)."""
        return ()

    @property
    def head_dim(self) -> int:
        """Width of one attention head of the language model."""
        text = self.model.config.text_config
        return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads

    @property
    def patch_size(self) -> int:
        """Side of one encoder patch in pixels."""
        return self.model.config.vision_config.patch_size

    @property
    def deepstack_planes(self) -> int:
        """DeepStack planes the vision side hands the first decoder layers (Qwen3-VL); 0 for other families."""
        return 0

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    @property
    def stop_token_ids(self) -> list[int]:
        """The end-of-sequence id(s) generation stops at: the generation config's, else the language model's."""
        generation = self.model.generation_config
        eos = generation.eos_token_id if generation is not None else None
        eos = eos if eos is not None else self.language_model.config.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    @property
    def takes_video(self) -> bool:
        """Whether LUVC runs this family on videos."""
        return self.video_placeholder is not None

    @property
    def video_token_id(self) -> int | None:
        return getattr(self.model.config, "video_token_id", None) if self.takes_video else None

    @property
    def language_model(self) -> PreTrainedModel:
        return cast(PreTrainedModel, self.model.model.language_model)

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return cast(nn.ModuleList, self.language_model.layers)

    @property
    def vision_blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    # -- LUVC -----------------------------------------------------------------------------------------------
    def apply_luvc(self, config: LUVCConfig | None = None) -> nn.Module:
        """Patch the model for ``config`` (``None``: defaults; ``LUVCConfig.off()``: the baseline path)."""
        self.luvc_config = (config or LUVCConfig()).resolve(self.vision_depth, self.num_layers)
        self._patch(self.luvc_config)
        model_class: type = type(self.model)
        swap_class(self.model, luvc_generation_class(model_class))  # model.generate() runs LUVC too
        return self.model

    def _patch(self, config: ResolvedLUVCConfig) -> None:
        raise NotImplementedError

    def compile_llm(self, cuda_graphs: bool | None = None) -> None:
        """Compile the LUVC LLM's prefill (``luvc.models.compiled.compile_llm``): one graph, no break, replayed as a
        CUDA graph on a GPU (``cuda_graphs``, default: on a CUDA device); ``apply_luvc`` first."""
        from luvc.models.compiled import compile_llm

        compile_llm(self.language_model, cuda_graphs)

    def plan(self, inputs: dict, config: LUVCConfig | None = None) -> RequestPlan:
        """The LUVC plan of the images in ``inputs`` (processor output) under ``config`` (default: the applied one),
        worked out once per image grid and config and shared (``luvc.models.plan``)."""
        config = self._resolved(config)

        def make() -> RequestPlan:
            vision = self.vision_trace(inputs, config)
            if config.spu_lowpass == "grid" and config.spu_variant != "none" and vision.span_grids is None:
                critical(GRID_REFUSAL)
            budgets = planned_budgets(self.budget_plans, self.num_layers, vision.span_tokens, config)
            return RequestPlan(config, vision, budgets)

        return self._plans.get((self.images_key(inputs), config), make)

    @property
    def budget_plans(self) -> PlanCache[BudgetPlan]:
        """The LLM's budget plans, kept on the multimodal model (``luvc_budget_plans``) so that its forward runs the
        budget plan of the request plan instead of planning again."""
        return plans_on(self.model.model, LUVC_BUDGET_PLANS)

    def images_key(self, inputs: dict) -> Hashable:
        """What the plan of ``inputs`` depends on besides the config (the image grids)."""
        raise NotImplementedError

    def vision_trace(self, inputs: dict, config: ResolvedLUVCConfig) -> VisionTrace:
        """The vision side of ``plan`` (``config`` resolved): encoder plan, segments per block, tokens per image."""
        raise NotImplementedError

    def _resolved(self, config: LUVCConfig | None) -> ResolvedLUVCConfig:
        return self.luvc_config if config is None else config.resolve(self.vision_depth, self.num_layers)

    @property
    def pan_and_scan(self) -> bool:
        """Whether a wide or tall image also brings its crops, a view each (PyTorch only; families that
        ``takes_pan_and_scan``: Gemma 3). Off by default, as upstream's processors have it."""
        return self._pan_and_scan

    @pan_and_scan.setter
    def pan_and_scan(self, on: bool) -> None:
        if on and not self.takes_pan_and_scan:
            critical(f"{self.name} has no pan-and-scan crops (Gemma 3 has); leave pan-and-scan off for it.")
        self._pan_and_scan = bool(on)

    def why_not_exportable(self) -> str | None:
        """Why this adapter, as set up, does not export (``None``: it does): its family's ``export_refusal``, or a
        setting of its own (Gemma 3's pan-and-scan)."""
        return self.export_refusal

    # -- inputs ---------------------------------------------------------------------------------------------
    @property
    def template(self) -> PromptTemplate:
        """The prompt template: the checkpoint's chat template when its tokenizer has one, else the family's."""
        if self._template is None:
            chat_template = chat_template_of(self.tokenizer) if self.tokenizer is not None else None
            self._template = template_for(
                self.tokenizer, self.image_placeholder, self.builtin_template, chat_template, self.builtin_chat_template
            )
        return self._template

    def preprocess_images(self, images: Sequence[Image.Image]) -> dict:
        """Pixel tensors (and grid metadata) exactly as the family's ``transformers`` image processor makes them."""
        raise NotImplementedError

    def preprocess_videos(self, videos: Sequence[Video]) -> dict:
        """Pixel tensors and grid metadata of ``videos`` (families that take videos)."""
        critical(self.video_unsupported)

    def placeholder_of(self, visual: Image.Image | Video) -> str:
        """The placeholder token of an image, or of a video."""
        if not isinstance(visual, Video):
            return self.image_placeholder
        if self.video_placeholder is None:
            critical(self.video_unsupported)
        return self.video_placeholder

    @property
    def image_sequence(self) -> tuple[str, str] | None:
        """An image's text where it is not its placeholder repeated: the text with ``{tokens}`` where the image's
        tokens go, and the token repeated there (Gemma 3); ``None`` for the placeholder repeated."""
        return None

    def visual_text(self, visual: Image.Image | Video, tokens: int, spans: int = 1) -> str:
        """What takes the template's ``{image}`` for ``visual`` of ``tokens`` LLM tokens in ``spans`` prompt spans:
        its placeholder token repeated (a Qwen3-VL video: one timestamped block per temporal slice; a Gemma 3 image:
        ``image_sequence``)."""
        if self.image_sequence is not None and not isinstance(visual, Video):
            text, token = self.image_sequence
            return text.replace("{tokens}", token * tokens)
        return self.placeholder_of(visual) * tokens

    def preprocess(self, visuals: Sequence[Image.Image | Video]) -> dict:
        """``preprocess_images`` or ``preprocess_videos``: a batch holds images or videos, not both."""
        videos = [visual for visual in visuals if isinstance(visual, Video)]
        if videos and len(videos) != len(visuals):
            critical("A batch holds images or videos, not both; send the images and the videos as separate requests.")
        if videos and not self.takes_video:
            critical(self.video_unsupported)
        images = [visual for visual in visuals if not isinstance(visual, Video)]
        return self.preprocess_videos(videos) if videos else self.preprocess_images(images)

    def prepare_inputs(
        self, images: Sequence[VisualRow], prompts: str | Sequence[str], config: LUVCConfig | None = None
    ) -> dict:
        """Model inputs for one prompt per image or video (a batch) in the prompt template, with as many placeholders
        as the LLM will receive after OIM under ``config`` (default: the applied config)."""
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(images):
            critical(f"Got {len(images)} images but {len(prompts)} prompts; give one prompt per image.")
        singles = [visual for visual in images if not isinstance(visual, (tuple, list))]
        if len(singles) != len(images):
            return self._prepare_several(images, prompts, config)
        pixels = self.preprocess(singles)
        plan = self.plan(pixels, config).vision
        texts = [
            self.template.render(prompt, count, self.placeholder_of(visual), self.visual_text(visual, count, spans))
            for visual, count, spans, prompt in zip(singles, plan.tokens_per_image, plan.spans_per_image, prompts)
        ]
        return self._tokenized(pixels, texts)

    def _prepare_several(self, rows: Sequence[VisualRow], prompts: Sequence[str], config: LUVCConfig | None) -> dict:
        """One prompt with several images and videos (the images first, then the videos, as one row)."""
        if self.visual_separator is None:
            critical(f"{self.name} takes one image per prompt; send one image (or video) with each prompt.")
        if len(rows) != 1:
            critical("A prompt with several images or videos runs alone; send one prompt and its images and videos.")
        row = rows[0]
        visuals = list(row) if isinstance(row, (tuple, list)) else [row]
        images = [visual for visual in visuals if not isinstance(visual, Video)]
        videos = [visual for visual in visuals if isinstance(visual, Video)]
        if videos and not self.takes_video:
            critical(self.video_unsupported)
        if any(token in prompts[0] for token in (self.image_placeholder, self.video_placeholder) if token):
            critical("A prompt with several images or videos is written without placeholders; the template adds them.")
        pixels = {
            **(self.preprocess_images(images) if images else {}),
            **(self.preprocess_videos(videos) if videos else {}),
        }
        plan = self.plan(pixels, config).vision
        ordered: list[Visual] = [*images, *videos]
        parts = [
            self.visual_text(visual, count, spans)
            for visual, count, spans in zip(ordered, plan.tokens_per_image, plan.spans_per_image)
        ]
        text = self.template.render(prompts[0], 0, self.image_placeholder, self.visual_separator.join(parts))
        return self._tokenized(pixels, [text])

    def _tokenized(self, pixels: dict, texts: Sequence[str]) -> dict:
        """Model inputs: the processor's ``pixels`` and the token ids of ``texts`` (one row each)."""
        token_ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        if len({len(ids) for ids in token_ids}) > 1:
            critical("Batched prompts tokenize to different lengths; LUVC batches need prompts of equal length.")
        inputs = {key: value for key, value in pixels.items() if key not in self.processor_only_keys}
        inputs["input_ids"] = torch.tensor(token_ids, dtype=torch.long)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        return inputs

    # -- export ---------------------------------------------------------------------------------------------
    def vision_graph(self, pixels: dict, plan: RequestPlan) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """The vision side (encoder with OIM, projector) for ``pixels`` of one image-size bucket under their
        ``plan``, as an exportable module returning ``image_embeds (images, n, D)``, and its feeds: ``pixel_values``
        first, then any host-planned metadata, named as the graph inputs."""
        raise NotImplementedError

    def processed_size(self, image_size: Sequence[int], pixels: dict) -> tuple[int, int]:
        """The size an image of ``image_size`` has after the image processor made ``pixels`` of it: the bucket it
        belongs to (Qwen-VL: the patch grid in pixels; InternVL: the tile canvas; else the pixel tensor's size)."""
        grids = pixels.get("video_grid_thw", pixels.get("image_grid_thw"))
        if grids is not None:
            _, grid_h, grid_w = grids[0].tolist()
            return grid_h * self.patch_size, grid_w * self.patch_size
        return tuple(pixels["pixel_values"].shape[-2:])

    def processed_frames(self, pixels: dict) -> int:
        """Frames of the video the processor made ``pixels`` of, padded to whole temporal patches (0: images)."""
        return 0

    def video_times(self, plan: RequestPlan) -> VideoTimes | None:
        """Where a video bucket's time positions go when they depend on the video's frame rate (Qwen2.5-VL)."""
        return None

    def pixel_rows_per_image(self, pixels: dict) -> int:
        """Rows of a ``(rows, C, H, W)`` pixel batch per image: 1, or InternVL's tiles."""
        return 1

    def prompt_position_ids(self, inputs: dict, plan: RequestPlan) -> torch.Tensor:
        """``(R, B, S)`` LLM position ids of the prompt in ``inputs`` under its images' ``plan`` (R = 3 M-RoPE rows,
        or 1). This default is the 1-row ``0 .. S-1`` of every row (InternVL, LLaVA); M-RoPE families override it."""
        batch, length = inputs["input_ids"].shape
        return torch.arange(length).expand(1, batch, length)

    # -- cost -----------------------------------------------------------------------------------------------
    def vision_spec(self) -> VisionSpec:
        raise NotImplementedError

    def llm_spec(self) -> LlmSpec:
        text = self.model.config.text_config
        return LlmSpec(
            hidden=text.hidden_size,
            layers=text.num_hidden_layers,
            heads=text.num_attention_heads,
            kv_heads=text.num_key_value_heads,
            head_dim=self.head_dim,
            intermediate=text.intermediate_size,
            vocab=text.vocab_size,
        )

    def cost(self, inputs: dict, config: LUVCConfig | None = None, kv_bytes_per_element: int = 2) -> CostReport:
        """Cost model (DESIGN.md 2.3) for ``inputs`` under ``config`` against the uncompressed model."""
        resolved = self._resolved(config)
        text_tokens = int(inputs["input_ids"].shape[1]) - sum(self.plan(inputs).tokens_per_image)
        compressed, uncompressed = self.plan(inputs, resolved), self.plan(inputs, LUVCConfig.off())
        return estimate_cost(
            self.vision_spec(),
            self.llm_spec(),
            compressed=(compressed.block_segments, compressed.budget_plan),
            baseline=(uncompressed.block_segments, uncompressed.budget_plan),
            text_tokens=text_tokens,
            config=resolved,
            kv_bytes_per_element=kv_bytes_per_element,
        )
