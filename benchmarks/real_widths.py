"""Every family at its real widths and depth, through the whole tool: export, run, parity, calibrate INT8, parity.

For each family a random-weight checkpoint with the widths and depth of a real model is written (the byte-level tiny
tokenizer; the family's own image processor): Qwen2-VL-2B, Qwen2.5-VL-3B, Qwen3-VL-2B, InternVL3-1B, Qwen3.5-0.8B,
LLaVA-1.5-7B and Gemma 3 4B. ``--layers FAMILY=N`` gives a family fewer decoder layers where the float32 PyTorch
reference that parity needs would not fit the machine's memory (default ``llava=8 qwen2.5-vl=24 gemma3=12``, what fits
24 GiB: parity peaks at about 1.9x the float32 model, and was killed at 22.95 GiB for Qwen2.5-VL-3B at 36 layers, at
21.57 GiB for LLaVA at 12; Gemma 3 4B's float32 model is 17 GiB at its 34 layers, 8.8 GiB at 12). Each
step is the CLI in a child process, whose wall time and peak RSS (``wait4``) are printed with the step's verdict:

    export --precision fp16 (one bucket), run (8 tokens), parity (fp16, 2 samples),
    export --precision fp32, calibrate --precision int8, parity (int8, 2 samples)

``--steps`` picks some (``fp16`` the first three, ``int8`` the last three); ``--workdir`` keeps each family's
checkpoint, exports and step logs (default: a temporary folder, removed). The table goes to stdout and, with
``--write``, to the end of ``docs/real-widths.md`` as a section of its own (when, the CPU, the command). Slow (10-30
minutes a family on 2 cores, 2.5 hours for all seven); not run by CI. Usage:
    python benchmarks/real_widths.py [--families qwen2-vl internvl3 ...] [--steps fp16 int8] [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import cpu_description

from luvc.images import synthetic_image
from luvc.models import tiny
from luvc.models.tiny import save_random_qwen2_vl, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30


def _widths(hidden: int, intermediate: int, layers: int, heads: int) -> dict:
    """A transformer's widths under the names transformers' configs share."""
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads)


def _text(tokenizer, vocab: int, widths: dict, kv_heads: int, **own) -> dict:
    """An LLM config of ``widths`` (``_widths``) with ``kv_heads`` KV heads and the tiny tokenizer's special tokens;
    ``own`` adds to or overrides the defaults (Qwen's 32768 positions)."""
    eos, pad = tiny._ids(tokenizer, "<|im_end|>", "<pad>")
    defaults = dict(max_position_embeddings=32768, eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    return dict(vocab_size=vocab, num_key_value_heads=kv_heads, **widths) | defaults | own


def _qwen_vision(depth: int, hidden: int, heads: int, intermediate: int, out_hidden: int, **own) -> dict:
    """A Qwen-VL vision config: ``depth`` blocks of ``hidden`` width, projected to the LLM's ``out_hidden``."""
    sizes = dict(intermediate_size=intermediate, out_hidden_size=out_hidden)
    return tiny.qwen_vision_config(depth=depth, hidden=hidden, heads=heads, **sizes, **own)


def qwen2_5_vl_3b(tokenizer, layers: int | None):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}
    windows = dict(window_size=112, fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu")
    config = Qwen2_5_VLConfig(
        text_config=_text(tokenizer, 151936, _widths(2048, 11008, layers or 36, 16), 2, rope_parameters=rope),
        vision_config=_qwen_vision(32, 1280, 16, 3420, 2048, **windows),
        tie_word_embeddings=True,
        **tiny._qwen_token_ids(tokenizer),
    )
    return Qwen2_5_VLForConditionalGeneration(config), tiny._qwen_image_processor()


def qwen3_vl_2b(tokenizer, layers: int | None):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    rope = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
    text = _text(tokenizer, 151936, _widths(2048, 6144, layers or 28, 16), 8, head_dim=128, rope_parameters=rope)
    deepstack = dict(num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17])
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=_qwen_vision(24, 1024, 16, 4096, 2048, patch=16, **deepstack),
        tie_word_embeddings=True,
        **tiny._qwen_token_ids(tokenizer),
    )
    return Qwen3VLForConditionalGeneration(config), tiny._qwen_image_processor(patch=16)


def qwen3_5_0_8b(tokenizer, layers: int | None):
    """Qwen3.5-0.8B: its LLM as its config.json gives it (three Gated DeltaNet layers to each attending one); its
    encoder's depth and width (12 blocks of 768) likewise, its heads and MLP (12, 3072) those of a ViT of that width."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    text = _text(
        tokenizer,
        248320,
        _widths(1024, 3584, layers or 24, 8),
        2,
        head_dim=256,
        rope_parameters=tiny.QWEN3_5_0_8B_ROPE,
        **tiny.QWEN3_5_0_8B_LINEAR,
    )
    config = Qwen3_5Config(
        text_config=text,
        vision_config=_qwen_vision(12, 768, 12, 3072, 1024, patch=16, num_position_embeddings=2304),
        tie_word_embeddings=True,
        **tiny._qwen_token_ids(tokenizer),
    )
    return Qwen3_5ForConditionalGeneration(config), tiny._qwen_image_processor(patch=16)


def internvl3_1b(tokenizer, layers: int | None):
    from transformers import InternVLConfig, InternVLForConditionalGeneration, Qwen2Config

    (image,) = tiny._ids(tokenizer, "<IMG_CONTEXT>")
    text = _text(tokenizer, 151674, _widths(896, 4864, layers or 24, 14), 2, rope_theta=1000000.0)
    config = InternVLConfig(
        vision_config=_widths(1024, 4096, 24, 16) | dict(image_size=[448, 448], patch_size=[14, 14]),
        text_config=Qwen2Config(**text).to_dict(),
        image_token_id=image,
        image_seq_length=256,
    )
    processor = tiny.GotOcr2ImageProcessorPil(
        size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1, max_patches=6
    )
    return InternVLForConditionalGeneration(config), processor


def llava_1_5_7b(tokenizer, layers: int | None):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    (image,) = tiny._ids(tokenizer, "<image>")
    vision = CLIPVisionConfig(**_widths(1024, 4096, 24, 16), image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(
        **_text(tokenizer, 32064, _widths(4096, 11008, layers or 32, 32), 32, max_position_embeddings=4096)
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image, image_seq_length=576)
    processor = tiny.CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    return LlavaForConditionalGeneration(config), processor


def gemma3_4b(tokenizer, layers: int | None):
    """Gemma 3 4B: SigLIP-So400m at 896 px (64 x 64 patches pooled to 256 tokens), a language model of five
    sliding-window layers (1024 positions) to one global layer (linear rope scaling 8)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    tokenizer.add_tokens(list(tiny.GEMMA3_TOKENS), special_tokens=True)
    boi, eoi, image, end_of_turn = tiny._ids(
        tokenizer, "<start_of_image>", "<end_of_image>", "<image_soft_token>", "<end_of_turn>"
    )
    depth = layers or 34
    rope = {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
    }
    text = _text(
        tokenizer,
        262208,
        _widths(2560, 10240, depth, 8),
        4,
        eos_token_id=end_of_turn,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=1024,
        max_position_embeddings=131072,
        layer_types=["full_attention" if (index + 1) % 6 == 0 else "sliding_attention" for index in range(depth)],
        rope_parameters=rope,
    )
    vision = _widths(1152, 4304, 27, 16) | dict(image_size=896, patch_size=14, vision_use_head=False)
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=256,
        boi_token_index=boi,
        eoi_token_index=eoi,
        image_token_index=image,
    )
    model = Gemma3ForConditionalGeneration(config)
    # upstream initialises the projection to zeros (a checkpoint overwrites it): every image would be the same tokens
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=config.initializer_range)
    return model, tiny.Gemma3ImageProcessorPil(size={"height": 896, "width": 896})


@dataclasses.dataclass(frozen=True)
class Family:
    """A family at one real model's widths: how to build it, and its export bucket."""

    model: str
    build: Callable | None  # (tokenizer, layers) -> (model, image processor); None: save_random_qwen2_vl
    bucket: str
    int8_flags: tuple[str, ...] = ()  # what calibrate needs beyond the defaults for INT8 parity


FAMILIES = {
    "qwen2-vl": Family("Qwen2-VL-2B", None, "448x448"),
    # fully quantized, its logits cosine against fp32 is 0.9868 (parity asks 0.99): two decoder layers stay float
    "qwen2.5-vl": Family("Qwen2.5-VL-3B", qwen2_5_vl_3b, "448x448", ("--target-agreement", "0.992")),
    "qwen3-vl": Family("Qwen3-VL-2B", qwen3_vl_2b, "448x448"),
    "internvl3": Family("InternVL3-1B", internvl3_1b, "448x448"),
    # fully quantized at 24 layers, its logits cosine against fp32 is 0.9887: its first layer stays float
    "qwen3.5": Family("Qwen3.5-0.8B", qwen3_5_0_8b, "448x448", ("--target-agreement", "0.992")),
    "llava": Family("LLaVA-1.5-7B", llava_1_5_7b, "336x336"),
    "gemma3": Family("Gemma 3 4B", gemma3_4b, "896x896"),
}


def save_checkpoint(family: Family, folder: Path, layers: int | None) -> None:
    """Write ``family``'s random-weight bf16 checkpoint to ``folder``."""
    if family.build is None:
        save_random_qwen2_vl(folder, layers or 28, 32, torch.bfloat16, (448, 448))
    else:
        tokenizer = tiny_tokenizer()
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(0)
            model, processor = family.build(tokenizer, layers)
        finally:
            torch.random.set_rng_state(state)
        model.config.architectures = [type(model).__name__]
        model.to(torch.bfloat16).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        processor.save_pretrained(folder)


@dataclasses.dataclass
class StepResult:
    step: str
    seconds: float
    peak_rss: int
    verdict: str


def run_logged(step: str, log: Path, *args: str) -> StepResult:
    """``luvc-export args`` in a child process, its output kept in ``log``: wall time, peak RSS, and its verdict (the
    exit status, and for parity its last verdict line)."""
    began = time.perf_counter()
    with log.open("w+") as output:
        argv = [sys.executable, "-m", "luvc.cli.main", *args]
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - began
        output.seek(0)
        lines = [line.strip() for line in output.read().splitlines() if line.strip()]
    code = os.waitstatus_to_exitcode(status)
    if step.startswith("parity"):
        verdict = next((line for line in reversed(lines) if "PASSED" in line or "FAILED" in line), f"exit {code}")
    else:
        verdict = "ok" if code == 0 else f"exit {code}: {lines[-1] if lines else ''}"
    print(f"  {step:14} {seconds:7.0f} s {usage.ru_maxrss * 1024 / GiB:6.2f} GiB  {verdict}", flush=True)
    return StepResult(step, seconds, usage.ru_maxrss * 1024, verdict)


def run_family(name: str, family: Family, steps: set[str], workdir: Path, layers: int | None) -> list[StepResult]:
    """The steps of one family in ``workdir``; a failed export or calibration skips what needs it."""
    checkpoint = workdir / "checkpoint"
    # in a process of its own: a child's peak RSS starts at its parent's (Linux keeps it across fork and exec), so
    # the model built here would count in every step's figure
    builder = multiprocessing.get_context("spawn").Process(target=save_checkpoint, args=(family, checkpoint, layers))
    builder.start()
    builder.join()
    if builder.exitcode != 0:
        raise SystemExit(f"real_widths: writing the {family.model} checkpoint failed")
    weight_bytes = sum(path.stat().st_size for path in checkpoint.glob("*.safetensors"))

    def run_step(step: str, *args: str) -> StepResult:
        return run_logged(step, workdir / f"{step.replace(' ', '-')}.log", *args)

    print(f"{family.model} ({name}, {layers or 'all'} decoder layers): {weight_bytes / GiB:.2f} GiB bf16", flush=True)
    bucket = ("--image-size", family.bucket, "--max-batch", "1")
    image = workdir / "image.png"
    synthetic_image(*map(int, family.bucket.split("x"))).save(image)
    request = ("--image", str(image), "--prompt", "Describe the image.", "--max-new-tokens", "8")
    samples = ("--num-samples", "2")
    results = []
    if "fp16" in steps:
        fp16 = workdir / "fp16"
        results.append(
            run_step(
                "export fp16", "export", "--model", str(checkpoint), "--out", str(fp16), *bucket, "--precision", "fp16"
            )
        )
        if results[-1].verdict == "ok":
            results.append(run_step("run fp16", "run", str(fp16), *request))
            results.append(run_step("parity fp16", "parity", str(fp16), "--model", str(checkpoint), *samples))
    if "int8" in steps:
        fp32, int8 = workdir / "fp32", workdir / "int8"
        results.append(
            run_step(
                "export fp32", "export", "--model", str(checkpoint), "--out", str(fp32), *bucket, "--precision", "fp32"
            )
        )
        if results[-1].verdict == "ok":
            calibrate = ("calibrate", str(fp32), "--precision", "int8", "--out", str(int8), *family.int8_flags)
            results.append(run_step(" ".join(["calibrate int8", *family.int8_flags]), *calibrate))
            if results[-1].verdict == "ok":
                results.append(run_step("parity int8", "parity", str(int8), "--model", str(checkpoint), *samples))
    return results


def table(rows: dict[str, tuple[Family, int | None, list[StepResult]]]) -> str:
    lines = ["| family | step | time | peak RSS | verdict |", "| --- | --- | --- | --- | --- |"]
    for family, layers, results in rows.values():
        label = f"{family.model} ({layers} layers)" if layers else family.model
        for result in results:
            lines.append(
                f"| {label} | {result.step} | {result.seconds:.0f} s | {result.peak_rss / GiB:.2f} GiB | "
                f"{result.verdict.replace('|', '/')} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--steps", nargs="+", choices=["fp16", "int8"], default=["fp16", "int8"])
    parser.add_argument(
        "--layers",
        nargs="*",
        default=["llava=8", "qwen2.5-vl=24", "gemma3=12"],
        metavar="FAMILY=N",
        help="decoder layers for a family whose reference would not fit memory at full depth "
        "(default llava=8 qwen2.5-vl=24 gemma3=12)",
    )
    parser.add_argument(
        "--write", action="store_true", help="add the table to docs/real-widths.md as a section of its own"
    )
    parser.add_argument("--workdir", type=Path, help="keep checkpoints, exports and each step's log here")
    args = parser.parse_args()
    depths = {}
    for entry in args.layers:
        name, _, count = entry.partition("=")
        if name not in FAMILIES or not count.isdigit() or int(count) < 1:
            parser.error(f"--layers {entry!r}: give FAMILY=N with FAMILY one of {list(FAMILIES)} and N >= 1")
        depths[name] = int(count)
    machine = f"{cpu_description()}; {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GiB:.0f} GiB"
    print(f"CPU: {machine}", flush=True)
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = {}
    for name in args.families:
        family = FAMILIES[name]
        layers = depths.get(name)
        with tempfile.TemporaryDirectory(prefix=f"luvc-real-{name}-") as tmp:
            workdir = args.workdir / name if args.workdir else Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            rows[name] = (family, layers, run_family(name, family, set(args.steps), workdir, layers))
    text = table(rows)
    print(text)
    if args.write:
        append_section(ROOT / "docs" / "real-widths.md", began, machine, " ".join(sys.argv[1:]), text)


def append_section(doc: Path, began: str, machine: str, arguments: str, text: str) -> None:
    """Add the run's table to ``doc`` under a heading naming when, where and how it ran (never replacing the page)."""
    command = f"python benchmarks/real_widths.py {arguments}".rstrip()
    section = f"\n## Measured ({began}; {machine})\n\n`{command}`\n\n{text}\n"
    with doc.open("a") as page:
        page.write(section)


if __name__ == "__main__":
    main()
