"""PyTorch CPU prefill: uncompressed vs LUVC on a random-weight VLM of realistic LLM shape, in one run.

``--family qwen2-vl`` (default): LLM like Qwen2-0.5B (24 layers, hidden 896, 14 heads, 2 KV heads, MLP 4864, vocab
151936); one 896x896 image (64x64 patches -> 1024 visual tokens). ``--family qwen3-vl``: LLM like Qwen3-VL-2B's
(hidden 2048, 16 heads, 8 KV heads, head_dim 128, MLP 6144, interleaved M-RoPE, DeepStack into the first 3 layers)
with 8 of its 28 layers (``--layers``); one 896x896 image (56x56 patches of 16 px -> 784 visual tokens).
``--family qwen3.5``: a hybrid LLM like Qwen3.5-0.8B's (24 layers, three Gated DeltaNet linear-attention layers to each
full-attention one; hidden 1024, 8 heads and 2 KV heads of 256 with a quarter rotary, MLP 3584, 16 key and 16 value
linear heads of 128, a 4-tap convolution, vocab 248320; as its published config.json gives them), Qwen3-VL's kind of
encoder reduced the same way; the same 896x896 image (784 visual tokens). All with 64 text tokens. The vision
encoders are reduced (8 blocks, width 640) so that the run fits a 2-core CPU in a few minutes; they still show the
encoder speedup from OIM. ``--video FRAMES`` (Qwen2-VL): a synthetic clip of FRAMES
448x448 frames instead of the image (16 frames: 8 temporal slices of 32x32 patches -> 2048 visual tokens);
``--oim-temporal`` adds temporal merges to the LUVC config (``--oim-first-axis T`` merges time first).

Prints measured speedups of the vision encoder and the LLM prefill, the cost model's predictions and
measured/predicted. Last line: ``prefill_speedup=<x>`` (LLM prefill). Usage:
    python benchmarks/prefill_speedup.py [--family qwen3-vl] [--layers N] [--repeats 3] [--budgets ...]
    python benchmarks/prefill_speedup.py --video 16 --oim-layers 3 --oim-temporal --oim-first-axis T
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import arguments
from transformers import (
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from luvc import LUVCConfig
from luvc.images import synthetic_image
from luvc.models.base import VLMAdapter
from luvc.models.qwen2_vl import Qwen2VLAdapter
from luvc.models.qwen3_5 import Qwen3_5Adapter
from luvc.models.qwen3_vl import Qwen3VLAdapter
from luvc.models.tiny import (
    QWEN3_5_0_8B_LINEAR,
    QWEN3_5_0_8B_ROPE,
    _qwen_token_ids,
    qwen_vision_config,
    tiny_tokenizer,
)
from luvc.videos import synthetic_video

IMAGE_SIDE = 896
VIDEO_SIDE = 448
TEXT_TOKENS = 64
FAMILIES = ("qwen2-vl", "qwen3-vl", "qwen3.5")


def _qwen_text(sizes: tuple[int, int, int, int, int], rope: dict, **own) -> dict:
    """A Qwen LLM config of ``sizes`` (hidden, MLP, layers, heads, KV heads) and M-RoPE ``rope``, with Qwen's
    vocabulary and tied embeddings."""
    hidden, intermediate, layers, heads, kv_heads = sizes
    return dict(
        vocab_size=151936,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        rope_parameters={"rope_type": "default", **rope},
        **own,
    )


def realistic_adapter(family: str = "qwen2-vl", layers: int | None = None, video: bool = False) -> VLMAdapter:
    """The benchmark model of ``family`` with random weights; ``layers`` decoder layers (default: 24 for Qwen2-VL and
    Qwen3.5, 8 of Qwen3-VL-2B's 28); ``video``: its processor keeps 448x448 frames."""
    tokenizer = tiny_tokenizer()
    token_ids = _qwen_token_ids(tokenizer)
    torch.manual_seed(0)
    if family == "qwen3.5":
        text = _qwen_text((1024, 3584, layers or 24, 8, 2), QWEN3_5_0_8B_ROPE, head_dim=256)
        config = Qwen3_5Config(
            text_config={**text, "vocab_size": 248320, **QWEN3_5_0_8B_LINEAR},
            vision_config=qwen_vision_config(
                8, 640, 10, patch=16, intermediate_size=2560, out_hidden_size=1024, num_position_embeddings=2304
            ),
            tie_word_embeddings=True,
            **token_ids,
        )
        model = Qwen3_5ForConditionalGeneration(config).eval()
        processor = Qwen2VLImageProcessorPil(patch_size=16, min_pixels=IMAGE_SIDE**2, max_pixels=IMAGE_SIDE**2)
        return Qwen3_5Adapter(model, tokenizer, processor, name="realistic-qwen3.5")
    if family == "qwen3-vl":
        config = Qwen3VLConfig(
            text_config=_qwen_text(
                (2048, 6144, layers or 8, 16, 8),
                {"rope_theta": 5000000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True},
                head_dim=128,
            ),
            vision_config=qwen_vision_config(
                8,
                640,
                10,
                patch=16,
                intermediate_size=2560,
                out_hidden_size=2048,
                num_position_embeddings=2304,
                deepstack_visual_indexes=[1, 3, 5],
            ),
            tie_word_embeddings=True,
            **token_ids,
        )
        model = Qwen3VLForConditionalGeneration(config).eval()
        processor = Qwen2VLImageProcessorPil(patch_size=16, min_pixels=IMAGE_SIDE**2, max_pixels=IMAGE_SIDE**2)
        return Qwen3VLAdapter(model, tokenizer, processor, name="realistic-qwen3-vl")
    config = Qwen2VLConfig(
        text_config=_qwen_text(
            (896, 4864, layers or 24, 14, 2), {"rope_theta": 1000000.0, "mrope_section": [8, 12, 12]}
        ),
        vision_config=qwen_vision_config(8, 896, 10, embed_dim=640, mlp_ratio=4),
        tie_word_embeddings=True,
        **token_ids,
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    side = VIDEO_SIDE if video else IMAGE_SIDE
    processor = Qwen2VLImageProcessorPil(min_pixels=side**2, max_pixels=side**2)
    return Qwen2VLAdapter(model, tokenizer, processor, name="realistic-qwen2-vl")


class StageTimer:
    """Wall time of a module's forward, measured with hooks inside a full model forward."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seconds = 0.0
        module.register_forward_pre_hook(self._start)
        module.register_forward_hook(self._stop)

    def _start(self, *_):
        self._began = time.perf_counter()

    def _stop(self, *_):
        self.seconds = time.perf_counter() - self._began


def prompt_for(adapter: VLMAdapter, text_tokens: int) -> str:
    """A prompt that makes the templated text exactly ``text_tokens`` tokens (byte-level tokenizer)."""
    template = adapter.template.render("", 0)
    return "x" * (text_tokens - len(adapter.tokenizer(template, add_special_tokens=False)["input_ids"]))


def measure(adapter: VLMAdapter, configs: dict[str, LUVCConfig], repeats: int, frames: int = 0) -> dict[str, dict]:
    """Median vision and LLM seconds per config; configs alternate inside every repeat so drift cancels. ``frames``:
    a synthetic clip of that many 448x448 frames instead of the image."""
    image = synthetic_video(frames, VIDEO_SIDE, VIDEO_SIDE) if frames else synthetic_image(IMAGE_SIDE, IMAGE_SIDE)
    prompt = prompt_for(adapter, TEXT_TOKENS)
    vision, llm = StageTimer(adapter.model.model.visual), StageTimer(adapter.model.model.language_model)
    results = {}
    for name, config in configs.items():
        adapter.apply_luvc(config)
        inputs = adapter.prepare_inputs([image], prompt)
        results[name] = dict(config=config, inputs=inputs, plan=adapter.plan(inputs).budget_plan, vision=[], llm=[])
    with torch.inference_mode():
        for repeat in range(repeats + 1):  # the first round warms up
            for result in results.values():
                adapter.apply_luvc(result["config"])
                adapter.model(**result["inputs"], use_cache=False, logits_to_keep=1)
                if repeat:
                    result["vision"].append(vision.seconds)
                    result["llm"].append(llm.seconds)
    for result in results.values():
        result["vision"], result["llm"] = statistics.median(result["vision"]), statistics.median(result["llm"])
    return results


def parse_benchmark_args(doc: str) -> tuple[argparse.Namespace, LUVCConfig]:
    """The options both prefill benchmarks take: repeats, and the LUVC config to compare with the baseline."""
    parser = arguments(doc, repeats=5)
    parser.add_argument("--family", choices=FAMILIES, default="qwen2-vl", help="the benchmark model (see above)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: see above)")
    parser.add_argument("--budgets", default=None, help="explicit budgets, e.g. '512,512,400,...,0'")
    parser.add_argument("--oim-layers", default=None, help="e.g. '3' or '2,5'; default: the config default")
    parser.add_argument("--video", type=int, default=0, metavar="FRAMES", help="a clip of FRAMES 448x448 frames")
    parser.add_argument("--oim-temporal", action="store_true", help="merge temporal slices too (oim_temporal)")
    parser.add_argument("--oim-first-axis", choices=("W", "H", "T"), default=None, help="axis of the first merge")
    args = parser.parse_args()
    oim = None if args.oim_layers is None else tuple(int(v) for v in args.oim_layers.split(","))
    budgets = None if args.budgets is None else tuple(int(v) for v in args.budgets.split(","))
    if args.video and args.family != "qwen2-vl":
        parser.error("--video runs on the Qwen2-VL benchmark model (--family qwen2-vl)")
    config = LUVCConfig(
        oim_layers=oim, budgets=budgets, oim_temporal=args.oim_temporal or None, oim_first_axis=args.oim_first_axis
    )
    return args, config


def main() -> None:
    args, config = parse_benchmark_args(__doc__)

    adapter = realistic_adapter(args.family, args.layers, video=bool(args.video))
    print(
        f"{adapter.name} ({adapter.num_layers} decoder layers): torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.repeats} repeats (median)"
    )
    results = measure(adapter, {"base": LUVCConfig.off(), "luvc": config}, args.repeats, args.video)
    base, luvc = results["base"], results["luvc"]
    adapter.apply_luvc(config)
    report = adapter.cost(luvc["inputs"])
    print(
        f"visual tokens into the LLM: {base['plan'].num_visual_tokens} uncompressed, "
        f"{luvc['plan'].num_visual_tokens} after OIM; text tokens: {report.text_tokens}"
    )
    if args.video:
        grid = luvc["inputs"]["video_grid_thw"][0].tolist()
        axes = list(adapter.luvc_config.oim_axes())
        print(f"video: {args.video} frames of {VIDEO_SIDE}x{VIDEO_SIDE}, patch grid (t, h, w) {grid}; OIM axes {axes}")
    print(f"decoder visual tokens per layer (LUVC): {list(luvc['plan'].total)}")
    print(f"vision encoder: {base['vision'] * 1e3:8.1f} ms -> {luvc['vision'] * 1e3:8.1f} ms")
    print(f"LLM prefill:    {base['llm'] * 1e3:8.1f} ms -> {luvc['llm'] * 1e3:8.1f} ms")
    vision_speedup, llm_speedup = base["vision"] / luvc["vision"], base["llm"] / luvc["llm"]
    print(
        f"vision_speedup measured={vision_speedup:.2f}x predicted={report.encoder_speedup:.2f}x "
        f"measured/predicted={vision_speedup / report.encoder_speedup:.2f}"
    )
    print(
        f"llm_prefill_speedup measured={llm_speedup:.2f}x predicted={report.llm_prefill_speedup:.2f}x "
        f"measured/predicted={llm_speedup / report.llm_prefill_speedup:.2f}"
    )
    print(
        f"kv_cache_bytes (fp16) predicted: {report.kv_cache_bytes_baseline / 2**20:.1f} MiB -> "
        f"{report.kv_cache_bytes / 2**20:.1f} MiB"
    )
    print(f"kv_cache_reduction predicted={report.kv_cache_reduction:.2f}x")
    print(f"prefill_speedup={llm_speedup:.2f}")


if __name__ == "__main__":
    main()
