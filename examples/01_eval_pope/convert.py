"""Convert a POPE question file (one JSON object per line: question_id, image, text, label) into a luvc-export eval
question set: OUT/questions.jsonl with ``yes-no`` questions whose image paths point at the COCO images."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def convert(pope_file: Path, images: Path, out: Path) -> int:
    """Write ``out/questions.jsonl`` from ``pope_file``; returns how many questions it holds."""
    records = []
    for number, line in enumerate(pope_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            pope = json.loads(line)
            image, text, label = pope["image"], pope["text"], pope["label"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            sys.exit(
                f"error: {pope_file} line {number} is not a POPE question ({error}); expected question_id, "
                "image, text and label."
            )
        if not (images / image).is_file():
            sys.exit(f"error: {images / image} does not exist; pass --images the folder of COCO val2014 images.")
        records.append(
            {
                "id": f"pope-{pope.get('question_id', number)}",
                "image": os.path.relpath(images / image, out),
                "question": text,
                "answer": label,
                "type": "yes-no",
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    partial = out / ".questions.jsonl.partial"
    partial.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    partial.replace(out / "questions.jsonl")  # complete or not at all
    return len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("pope_file", type=Path, help="a POPE question file, e.g. coco_pope_random.json")
    parser.add_argument("--images", type=Path, required=True, help="the folder of COCO val2014 images")
    parser.add_argument("--out", type=Path, required=True, help="the eval question set folder to write")
    args = parser.parse_args()
    if not args.pope_file.is_file():
        sys.exit(f"error: {args.pope_file} does not exist; pass a POPE question file.")
    count = convert(args.pope_file, args.images, args.out)
    print(f"wrote {count} yes-no questions to {args.out / 'questions.jsonl'}")


if __name__ == "__main__":
    main()
