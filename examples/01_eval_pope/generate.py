"""Write a small stand-in for POPE's files: synthetic images named as COCO val2014's and a question file in POPE's
layout (``question_id``, ``image``, ``text``, ``label``), so the converter and ``luvc-export eval`` run without a
download."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from luvc.images import synthetic_image

OBJECTS = ("dog", "snowboard", "bus", "cup")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="folder to write (val2014/ and coco_pope_random.json)")
    parser.add_argument("--images", type=int, default=3, help="how many images (default 3)")
    args = parser.parse_args()
    images = args.out / "val2014"
    images.mkdir(parents=True, exist_ok=True)
    questions = []
    for index in range(args.images):
        name = f"COCO_val2014_{index:012d}.jpg"
        synthetic_image(224, 224, seed=index).save(images / name)
        for offset, label in enumerate(("yes", "no")):
            thing = OBJECTS[(index + offset) % len(OBJECTS)]
            text = f"Is there a {thing} in the image?"
            questions.append({"question_id": len(questions) + 1, "image": name, "text": text, "label": label})
    (args.out / "coco_pope_random.json").write_text("".join(json.dumps(q) + "\n" for q in questions))
    print(f"wrote {len(questions)} questions about {args.images} images to {args.out}")


if __name__ == "__main__":
    main()
