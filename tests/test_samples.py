"""Samples from a folder or the synthetic set: images keep their size, prompts cycle, bad folders are named."""

import pytest
from PIL import Image

from luvc.errors import LuvcError
from luvc.samples import folder_samples, synthetic_samples

SIZES = [(224, 224), (168, 252)]


def test_synthetic_samples_are_seeded_and_cycle_buckets():
    first, again = synthetic_samples(SIZES, 3, seed=7), synthetic_samples(SIZES, 3, seed=7)
    assert [s.image_size for s in first] == [(224, 224), (168, 252), (224, 224)]
    assert [s.image.tobytes() for s in first] == [s.image.tobytes() for s in again]
    assert first[0].image.tobytes() != synthetic_samples(SIZES, 1, seed=8)[0].image.tobytes()


def test_folder_images_keep_their_size_and_prompts_cycle(tmp_path):
    Image.new("RGB", (300, 200), "red").save(tmp_path / "a_wide.png")
    Image.new("RGB", (100, 100), "blue").save(tmp_path / "b_square.jpg")
    Image.new("RGB", (90, 90), "blue").save(tmp_path / "c_square.bmp")
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / "prompts.txt").write_text("first?\n\nsecond?\n")
    samples = folder_samples(tmp_path)
    assert [s.name for s in samples] == ["a_wide.png", "b_square.jpg", "c_square.bmp"]
    assert [s.image_size for s in samples] == [(200, 300), (100, 100), (90, 90)]  # the runtime's fit maps them
    assert [s.prompt for s in samples] == ["first?", "second?", "first?"]
    assert len(folder_samples(tmp_path, count=2)) == 2


def test_bad_folders_get_clear_errors(tmp_path):
    with pytest.raises(LuvcError, match="does not exist"):
        folder_samples(tmp_path / "missing")
    with pytest.raises(LuvcError, match="holds no image"):
        folder_samples(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(LuvcError, match="broken.png"):
        folder_samples(tmp_path)
    (tmp_path / "broken.png").unlink()
    Image.new("RGB", (50, 50)).save(tmp_path / "ok.png")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(LuvcError, match="holds no prompt"):
        folder_samples(tmp_path, prompts_file=tmp_path / "empty.txt")
