"""What fitting an image to a bucket changes against the processor's own size choice, per tiny family, in PyTorch LUVC.

For camera and phone-sized synthetic images, each family's LUVC model answers (greedy, ``--tokens`` tokens) on the
image as its processor sizes it (the unfitted run, what PyTorch without an export does) and on the image fitted to
the buckets of ``--image-size aspects`` (and of the family's one default bucket) under ``nearest`` and ``pad``, the
pixels an export's engine would see. Prints, per family, bucket set and policy: how many images changed size, the
share of answers identical to the unfitted run, and the share of identical first tokens. Last line:
``fit_nearest_first_token_agreement=<x>`` (aspects buckets, mean over the families whose images were resized).

The tiny models have random weights: agreement here measures how much the pixels change what the model computes,
not task accuracy; run ``luvc-export eval --export`` on a real checkpoint and your questions for that. Usage:
    python benchmarks/fit_agreement.py [--tokens 8]
"""

from __future__ import annotations

import torch
from common import arguments

from luvc.export.buckets import BucketSet
from luvc.export.profile import ExportProfile
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.generation import greedy_generate
from luvc.runtime.fit import fit_visual

FAMILIES = ("tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-internvl", "tiny-llava")
IMAGE_SIZES = ((480, 640), (640, 480), (720, 1280), (1280, 720), (768, 1024), (900, 1600), (1080, 1080), (600, 2000))
PROMPT = "Describe the image."


def answer(adapter, image, tokens: int) -> list[int]:
    inputs = adapter.prepare_inputs([image], PROMPT)
    with torch.no_grad():
        return greedy_generate(adapter.model, inputs, tokens)[0].tolist()


def main() -> None:
    parser = arguments(__doc__, tokens=8)
    args = parser.parse_args()
    print(f"{len(IMAGE_SIZES)} synthetic images per family (H x W: {', '.join(f'{h}x{w}' for h, w in IMAGE_SIZES)})")
    print(f"{'family':<17}{'buckets':<10}{'fit':<9}{'resized':>8}{'same answer':>13}{'same 1st token':>16}")
    nearest_first = []
    for family in FAMILIES:
        adapter = load_model(family)
        adapter.apply_luvc()
        images = [synthetic_image(h, w, seed) for seed, (h, w) in enumerate(IMAGE_SIZES)]
        unfitted = [answer(adapter, image, args.tokens) for image in images]
        for label, sizes in (
            ("aspects", ExportProfile(image_sizes=(BucketSet("aspects"),)).resolve(adapter).image_sizes),
            ("default", ExportProfile().resolve(adapter).image_sizes),
        ):
            for policy in ("nearest", "pad"):
                fits = [fit_visual(image, sizes, adapter.image_processor, policy) for image in images]
                fitted = [answer(adapter, image, args.tokens) for image, _ in fits]
                resized = sum(fit.changed for _, fit in fits)
                same = sum(a == b for a, b in zip(fitted, unfitted)) / len(images)
                first = sum(a[0] == b[0] for a, b in zip(fitted, unfitted)) / len(images)
                print(f"{family:<17}{label:<10}{policy:<9}{resized:>8}{same:>13.2f}{first:>16.2f}")
                if label == "aspects" and policy == "nearest" and resized:
                    nearest_first.append(first)
    print(f"fit_nearest_first_token_agreement={sum(nearest_first) / max(len(nearest_first), 1):.3f}")


if __name__ == "__main__":
    main()
