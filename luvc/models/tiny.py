"""Built-in tiny random-weight VLMs (seeded, no downloads) and their byte-level tokenizer.

Shapes follow STYLE.md's test registry (hidden 32, vision depth 2-3), with 4 decoder layers so that the default
SPU schedule shows a cascade (full, full, half, zero). Weights are random: generated text is gibberish, but it is
the same gibberish on every machine, which is what parity tests need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from luvc.models.weights import cast_in_place

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<image>",
    "<pad>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
)
VOCAB_SIZE = 272  # 256 bytes + specials, rounded up
TINY_IMAGE_SIZE = 224
INTERNVL_TILE = 112  # 8 x 8 patches of 14 px: 16 LLM tokens a tile after the pixel shuffle


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (every byte is a token, no merges) with the Qwen-VL and LLaVA special tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    vocab.update({token: len(alphabet) + index for index, token in enumerate(SPECIAL_TOKENS)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=list(SPECIAL_TOKENS),
    )


def _ids(tokenizer: PreTrainedTokenizerFast, *tokens: str) -> list[int]:
    vocabulary = tokenizer.get_vocab()  # with the added tokens
    return [vocabulary[token] for token in tokens]


def _text_dims(tokenizer) -> dict:
    """Decoder shape shared by every tiny family."""
    eos, pad = _ids(tokenizer, "<|im_end|>", "<pad>")
    dims = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    tokens = dict(eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    return dict(dims, vocab_size=VOCAB_SIZE, max_position_embeddings=4096, **tokens)


def _qwen_text_config(tokenizer) -> dict:
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}
    return dict(_text_dims(tokenizer), rope_parameters=rope)


def _qwen_image_processor(patch: int = 14) -> Qwen2VLImageProcessorPil:
    side = 2 * patch  # one merge unit
    return Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=2, temporal_patch_size=2, min_pixels=(2 * side) ** 2, max_pixels=(16 * side) ** 2
    )


VIT_DIMS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4)  # InternVL, LLaVA


def qwen_vision_config(depth: int = 2, hidden: int = 32, heads: int = 4, patch: int = 14, **own) -> dict:
    """A Qwen-VL vision-encoder config (2x2 merge, 2-frame temporal patches; the tiny one by default), with each
    family's own fields."""
    geometry = dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch, spatial_merge_size=2)
    return dict(geometry, temporal_patch_size=2, **own)


def _qwen_token_ids(tokenizer) -> dict:
    image, video, start, end = _ids(tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    return dict(image_token_id=image, video_token_id=video, vision_start_token_id=start, vision_end_token_id=end)


def tiny_qwen2_vl(tokenizer):
    config = Qwen2VLConfig(
        text_config=_qwen_text_config(tokenizer),
        vision_config=qwen_vision_config(embed_dim=32, mlp_ratio=2),
        **_qwen_token_ids(tokenizer),
    )
    return Qwen2VLForConditionalGeneration(config), _qwen_image_processor()


def tiny_qwen2_5_vl(tokenizer):
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text_config(tokenizer),
        vision_config=qwen_vision_config(
            intermediate_size=64, out_hidden_size=32, window_size=112, fullatt_block_indexes=[1]
        ),
        **_qwen_token_ids(tokenizer),
    )
    return Qwen2_5_VLForConditionalGeneration(config), _qwen_image_processor()


def tiny_qwen3_vl(tokenizer):
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2], "mrope_interleaved": True}
    config = Qwen3VLConfig(
        text_config=dict(_text_dims(tokenizer), head_dim=8, rope_parameters=rope),
        vision_config=qwen_vision_config(
            depth=3,
            patch=16,
            intermediate_size=64,
            out_hidden_size=32,
            num_position_embeddings=64,  # an 8 x 8 table, resampled to each grid
            deepstack_visual_indexes=[0, 1],  # block 0's feature is taken before the default OIM step (after block 0)
        ),
        **_qwen_token_ids(tokenizer),
    )
    return Qwen3VLForConditionalGeneration(config), _qwen_image_processor(patch=16)


def linear_attention_config(key_heads: int, value_heads: int, head_dim: int, conv: int = 4) -> dict:
    """A Qwen3.5 text config's Gated DeltaNet fields: ``key_heads`` key and ``value_heads`` value heads of
    ``head_dim``, after a causal convolution of ``conv`` taps."""
    return dict(
        linear_conv_kernel_dim=conv,
        linear_key_head_dim=head_dim,
        linear_value_head_dim=head_dim,
        linear_num_key_heads=key_heads,
        linear_num_value_heads=value_heads,
    )


# Qwen3.5-0.8B's language model as its config.json gives it (the benchmarks' real-widths Qwen3.5)
QWEN3_5_0_8B_LINEAR = linear_attention_config(key_heads=16, value_heads=16, head_dim=128)
QWEN3_5_0_8B_ROPE = {
    "rope_type": "default",
    "rope_theta": 10000000.0,
    "mrope_section": [11, 11, 10],
    "mrope_interleaved": True,
    "partial_rotary_factor": 0.25,
}


def tiny_qwen3_5(tokenizer):
    """Qwen3.5's shape in miniature: layers 0-2 Gated DeltaNet linear attention, layer 3 full attention with partial
    rotary embeddings (half of a 16-wide head); Qwen3-VL's encoder without DeepStack."""
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1], "partial_rotary_factor": 0.5}
    linear = linear_attention_config(key_heads=2, value_heads=4, head_dim=8)
    config = Qwen3_5Config(
        text_config=dict(_text_dims(tokenizer), head_dim=16, rope_parameters=rope, **linear),
        vision_config=qwen_vision_config(
            depth=3, patch=16, intermediate_size=64, out_hidden_size=32, num_position_embeddings=64
        ),
        **_qwen_token_ids(tokenizer),
    )
    return Qwen3_5ForConditionalGeneration(config), _qwen_image_processor(patch=16)


def tiny_internvl(tokenizer):
    (image,) = _ids(tokenizer, "<IMG_CONTEXT>")
    config = InternVLConfig(
        vision_config=dict(VIT_DIMS, image_size=[INTERNVL_TILE, INTERNVL_TILE], patch_size=[14, 14]),
        text_config=Qwen2Config(**_text_dims(tokenizer)).to_dict(),
        image_token_id=image,
        image_seq_length=(INTERNVL_TILE // 28) ** 2,
    )
    processor = GotOcr2ImageProcessorPil(
        size={"height": INTERNVL_TILE, "width": INTERNVL_TILE}, crop_to_patches=True, min_patches=1, max_patches=6
    )
    return InternVLForConditionalGeneration(config), processor


def tiny_llava(tokenizer):
    (image,) = _ids(tokenizer, "<image>")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**VIT_DIMS, image_size=TINY_IMAGE_SIZE, patch_size=14, projection_dim=32),
        text_config=LlamaConfig(**_text_dims(tokenizer)),
        image_token_index=image,
        image_seq_length=(TINY_IMAGE_SIZE // 14) ** 2,
    )
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )
    return LlavaForConditionalGeneration(config), processor


GEMMA3_TOKENS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<end_of_turn>")
GEMMA3_VOCAB_SIZE = 280  # the tiny tokenizer's tokens and Gemma 3's five of its own, rounded up


def tiny_gemma3(tokenizer):
    """Gemma 3's shape in miniature: a SigLIP encoder of 16 x 16 patches average-pooled 4 x 4 to 16 LLM tokens (Gemma
    3: 64 x 64 patches to 256), a language model whose layers alternate sliding-window and global attention (one
    rotary table each, query-key norms, scaled embeddings), Gemma 3's image and turn tokens. The window (512 tokens)
    is longer than the tiny prompts; tests that need it to bind narrow it."""
    tokenizer.add_tokens(list(GEMMA3_TOKENS), special_tokens=True)
    boi, eoi, image, end_of_turn = _ids(
        tokenizer, "<start_of_image>", "<end_of_image>", "<image_soft_token>", "<end_of_turn>"
    )
    rope = {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
    }
    text = dict(
        _text_dims(tokenizer),
        vocab_size=GEMMA3_VOCAB_SIZE,
        eos_token_id=end_of_turn,
        head_dim=8,
        query_pre_attn_scalar=8,
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        rope_parameters=rope,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=dict(VIT_DIMS, image_size=TINY_IMAGE_SIZE, patch_size=14, vision_use_head=False),
        mm_tokens_per_image=16,
        boi_token_index=boi,
        eoi_token_index=eoi,
        image_token_index=image,
    )
    processor = Gemma3ImageProcessorPil(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    model = Gemma3ForConditionalGeneration(config)
    # upstream initialises the projection to zeros (a checkpoint overwrites it): every image would be the same tokens
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=config.initializer_range)
    return model, processor


TINY_BUILDERS: dict[str, Callable] = {
    "tiny-qwen2-vl": tiny_qwen2_vl,
    "tiny-qwen2.5-vl": tiny_qwen2_5_vl,
    "tiny-qwen3-vl": tiny_qwen3_vl,
    "tiny-qwen3.5": tiny_qwen3_5,
    "tiny-internvl": tiny_internvl,
    "tiny-llava": tiny_llava,
    "tiny-gemma3": tiny_gemma3,
}


TINY_ARCHITECTURES = {  # what each builder makes (``build_tiny`` checks): the adapter registry's key
    "tiny-qwen2-vl": "Qwen2VLForConditionalGeneration",
    "tiny-qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration",
    "tiny-qwen3-vl": "Qwen3VLForConditionalGeneration",
    "tiny-qwen3.5": "Qwen3_5ForConditionalGeneration",
    "tiny-internvl": "InternVLForConditionalGeneration",
    "tiny-llava": "LlavaForConditionalGeneration",
    "tiny-gemma3": "Gemma3ForConditionalGeneration",
}


def build_tiny(name: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Any]:
    """``(model, tokenizer, image_processor)`` of the built-in tiny model ``name``, weights seeded by ``seed``."""
    tokenizer = tiny_tokenizer()
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model, processor = TINY_BUILDERS[name](tokenizer)
    finally:
        torch.random.set_rng_state(state)
    if type(model).__name__ != TINY_ARCHITECTURES[name]:
        raise TypeError(f"{name} built a {type(model).__name__}, registered as {TINY_ARCHITECTURES[name]}")
    model.config.architectures = [type(model).__name__]
    return model.eval(), tokenizer, processor


QWEN2_VL_2B_WIDTHS = dict(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    heads=12,
    kv_heads=2,
    vision_width=1280,
    vision_heads=16,
)


def save_random_qwen2_vl(
    folder,
    layers: int,
    vision_blocks: int,
    dtype: torch.dtype,
    image_sides: tuple[int, int] = (448, 448),
    **widths: int,
) -> None:
    """Write a random-weight Qwen2-VL checkpoint (config, weights, byte-level tokenizer, an image processor that
    keeps images between ``image_sides`` squares) to ``folder``: Qwen2-VL-2B's widths (``QWEN2_VL_2B_WIDTHS``, tied
    embedding) unless ``widths`` overrides some, with ``layers`` decoder layers and ``vision_blocks`` encoder
    blocks."""
    width = {**QWEN2_VL_2B_WIDTHS, **widths}
    tokenizer = tiny_tokenizer()
    head_dim = width["hidden_size"] // width["heads"]
    section = head_dim // 16  # M-RoPE: temporal, height, width sections of the rotary half (16/24/24 of 64)
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=width["vocab_size"],
            hidden_size=width["hidden_size"],
            intermediate_size=width["intermediate_size"],
            num_hidden_layers=layers,
            num_attention_heads=width["heads"],
            num_key_value_heads=width["kv_heads"],
            max_position_embeddings=32768,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [2 * section, 3 * section, 3 * section],
            },
        ),
        vision_config=dict(
            depth=vision_blocks,
            embed_dim=width["vision_width"],
            hidden_size=width["hidden_size"],
            num_heads=width["vision_heads"],
            mlp_ratio=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        tie_word_embeddings=True,
        **_qwen_token_ids(tokenizer),
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        model = cast_in_place(Qwen2VLForConditionalGeneration(config), dtype).eval()
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    low, high = image_sides
    Qwen2VLImageProcessorPil(min_pixels=low**2, max_pixels=high**2).save_pretrained(folder)
