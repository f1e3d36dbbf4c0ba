"""Preprocessing an image: the runtime's device path (``luvc.runtime.pixels``) against the ``transformers`` image
processor, per family, on the CPU.

An 896x896 image (``--side``) is fitted to each family's bucket as ``luvc-export run`` fits it (PIL; the same for both
sides, so not timed), then made into the vision graph's ``pixel_values`` twice per round, taking turns: by the
family's ``transformers`` PIL image processor (rescale, normalise and lay out in NumPy, then handed to torch), and by
the device path (8-bit pixels to torch, rescaled and normalised in float32, the layout; here the device is the
CPU). The processors
are each family's tiny one with the published model's sizes: Qwen2-VL and Qwen2.5-VL (14-pixel patches, 28 x 28 x
16384 pixels at most), Qwen3-VL and Qwen3.5 (16-pixel patches), InternVL3 (448-pixel tiles, up to 12, and a
thumbnail), LLaVA-1.5 (336 x 336) and Gemma 3 (896 x 896). Both sides' values are checked equal bit for bit first.

Prints the CPU, then per family the median milliseconds of each over ``--rounds`` and their ratio; the last line is
``preprocess_speedup_min=`` (the smallest ratio; target >= 3). Usage:
    python benchmarks/preprocess.py [--side 896] [--rounds 30]
"""

from __future__ import annotations

import os
import statistics
import time

import torch
from common import arguments, cpu_description

from luvc.images import synthetic_image
from luvc.models import TINY_MODELS
from luvc.models.tiny import build_tiny
from luvc.processing import processed_size, resample_of, tile_canvas
from luvc.runtime.pixels import BytePixelMaker

QWEN2_SIZE = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}
QWEN3_SIZE = {"shortest_edge": 64 * 1024, "longest_edge": 16 * 1024 * 1024}
PUBLISHED = {  # each family's image processor settings in its published checkpoint, where the tiny one differs
    "tiny-qwen2-vl": {"size": QWEN2_SIZE},
    "tiny-qwen2.5-vl": {"size": QWEN2_SIZE},
    "tiny-qwen3-vl": {"size": QWEN3_SIZE},
    "tiny-qwen3.5": {"size": QWEN3_SIZE},
    "tiny-internvl": {"size": {"height": 448, "width": 448}, "max_patches": 12},
    "tiny-llava": {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}},
    "tiny-gemma3": {"size": {"height": 896, "width": 896}},
}


def published_processor(family: str):
    """The family's tiny image processor with its published checkpoint's sizes."""
    processor = build_tiny(family)[2]
    return type(processor).from_dict({**processor.to_dict(), **PUBLISHED[family]})


def fitted(processor, side: int):
    """A synthetic ``side`` x ``side`` image as fitting makes it for this processor: its processed size."""
    image = synthetic_image(side, side, 11)
    if getattr(processor, "crop_to_patches", None) is not None:
        size = tile_canvas((side, side), processor)
    else:
        size = processed_size(processor, (side, side)) or (processor.size.height, processor.size.width)
    return image if size == (side, side) else image.resize(size[::-1], resample_of(processor))


def measure(family: str, side: int, rounds: int) -> float:
    """Prints the family's row; returns how many times faster the device path made its pixels."""
    processor = published_processor(family)
    image = fitted(processor, side)
    maker = BytePixelMaker(processor)

    def by_processor():
        return torch.from_numpy(processor(images=[image], return_tensors="np")["pixel_values"])

    def on_device():
        return maker([image]).on(torch.from_numpy)

    reference = by_processor()
    if maker([image]) is None or not torch.equal(on_device(), reference):
        raise SystemExit(f"{family}: the device path does not make the processor's pixels for {image.size}")
    times: dict[str, list[float]] = {"processor": [], "device": []}
    for _ in range(rounds + 2):  # the first two warm up
        for name, make in (("processor", by_processor), ("device", on_device)):
            began = time.perf_counter()
            make()
            times[name].append((time.perf_counter() - began) * 1e3)
    processor_ms, device_ms = (statistics.median(values[2:]) for values in times.values())
    shape = "x".join(map(str, reference.shape))
    print(
        f"{family:16} fitted {image.width}x{image.height} -> {shape:18} processor {processor_ms:7.1f} ms  "
        f"device path {device_ms:6.1f} ms  {processor_ms / device_ms:5.2f}x",
        flush=True,
    )
    return processor_ms / device_ms


def main() -> None:
    args = arguments(__doc__, side=896, rounds=30).parse_args()
    print(f"{cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    ratios = {family: measure(family, args.side, args.rounds) for family in TINY_MODELS}
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"preprocess_speedup_min={min(ratios.values()):.2f}")
    print(f"slowest_family={min(ratios, key=ratios.get)}")


if __name__ == "__main__":
    main()
