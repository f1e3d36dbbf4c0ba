"""Image files: a missing or unreadable file gets one line naming it."""

import pytest

from luvc.cli.main import main
from luvc.errors import LuvcError
from luvc.images import load_image


def test_missing_and_unreadable_image_files(tmp_path, exports, capsys):
    with pytest.raises(LuvcError, match="does not exist; pass an existing file to --image"):
        load_image(tmp_path / "missing.png")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(LuvcError, match="Cannot read .*garbage.png as an image"):
        load_image(garbage)
    assert main(["run", str(exports("tiny-llava")), "--image", str(garbage), "--prompt", "hi"]) == 2
    assert "garbage.png as an image" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("image_format", "named"), [("PNG", "PNG image"), ("JPEG", "JPEG image"), ("GIF", "GIF image")]
)
def test_a_cut_short_image_is_called_damaged_not_of_the_wrong_format(tmp_path, image_format, named, exports, capsys):
    from luvc.images import synthetic_image

    buffer = io.BytesIO()
    synthetic_image(64, 64).save(buffer, format=image_format)
    cut = tmp_path / f"cut.{image_format.lower()}"
    cut.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    message = rf"cut\.{image_format.lower()} is a damaged or cut-short {named} \(.*\); use an intact copy of the file\."
    with pytest.raises(LuvcError, match=message):
        load_image(cut)
    with pytest.raises(LuvcError, match=f"the upload is a damaged or cut-short {named}"):
        decode_image(buffer.getvalue()[:-200], "the upload")
    assert main(["run", str(exports("tiny-llava")), "--image", str(cut), "--prompt", "hi"]) == 2
    assert "PNG or JPEG" not in capsys.readouterr().err


# --- what the model sees is the picture a viewer shows: each mode against a conversion worked out here by hand ---

import io  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from luvc.images import arrival_note, decode_image  # noqa: E402


def _roundtrip(image: Image.Image, fmt: str = "PNG", **save) -> Image.Image:
    """``image`` saved as ``fmt`` and read back by the project's loader, as a file would reach it."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return decode_image(buffer.getvalue(), f"image.{fmt.lower()}")


def _grey(loaded: Image.Image) -> np.ndarray:
    array = np.asarray(loaded)
    assert loaded.mode == "RGB" and (array == array[..., :1]).all()
    return array[..., 0].astype(np.int64)


def test_a_16_bit_grey_png_keeps_its_gradient():
    gradient = np.linspace(0, 65535, 64 * 256).round().astype(np.uint16).reshape(64, 256)
    loaded = _roundtrip(Image.fromarray(gradient))
    expected = np.floor(gradient.astype(np.int64) / 257 + 0.5).astype(np.int64)  # 0-65535 onto 0-255
    np.testing.assert_array_equal(_grey(loaded), expected)
    assert len(np.unique(expected)) == 256


@pytest.mark.parametrize(
    ("mode", "levels", "shown", "out_of_range", "message"),
    [
        ("I", np.array([0, 257, 32896, 65535], np.int32), [0, 1, 128, 255], 4, "values outside 0-65535.*16-bit PNG"),
        ("F", np.array([0.0, 0.25, 0.5, 1.0], np.float32), [0, 64, 128, 255], 300, "values outside 0-1"),
    ],
    ids=["32-bit integer in 16-bit range", "float in 0 to 1"],
)
def test_a_wide_image_in_its_range_is_scaled_and_one_outside_is_refused(mode, levels, shown, out_of_range, message):
    values = np.repeat(np.array([levels] * 8), 2, axis=1)  # 8x8
    loaded = _roundtrip(Image.fromarray(values, mode), "TIFF")
    np.testing.assert_array_equal(_grey(loaded)[0, ::2], shown)
    with pytest.raises(LuvcError, match=message):
        _roundtrip(Image.fromarray(values * out_of_range, mode), "TIFF")


def _over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``colour`` (..., 3) with ``alpha`` (...) over a white background, rounded: the reference compositing."""
    a = alpha[..., None].astype(np.float64) / 255
    return np.rint(colour * a + 255 * (1 - a)).astype(np.int64)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_is_composited_over_white(mode):
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (16, 16, 3))
    alpha = rng.integers(0, 256, (16, 16))
    if mode == "LA":
        colour = np.repeat(colour[..., :1], 3, axis=-1)
        image = Image.fromarray(np.dstack([colour[..., 0], alpha]).astype(np.uint8), "LA")
    else:
        image = Image.fromarray(np.dstack([colour, alpha]).astype(np.uint8), "RGBA")
    loaded = np.asarray(_roundtrip(image)).astype(np.int64)
    assert np.abs(loaded - _over_white(colour, alpha)).max() <= 1  # Pillow composites in integers


def test_a_palette_image_with_a_transparent_index_shows_white_there():
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0, 0, 0] * 254)
    palette.putpixel((0, 0), 0)
    loaded = np.asarray(_roundtrip(palette, transparency=0))
    assert tuple(loaded[0, 0]) == (255, 255, 255) and tuple(loaded[1, 1]) == (200, 10, 10)


def test_cmyk_without_a_profile_is_the_standard_conversion():
    rng = np.random.default_rng(1)
    cmyk = rng.integers(0, 256, (8, 8, 4))
    loaded = np.asarray(_roundtrip(Image.fromarray(cmyk.astype(np.uint8), "CMYK"), "TIFF")).astype(np.int64)
    c, m, y, k = (cmyk[..., i] for i in range(4))
    expected = np.stack([(255 - x) * (255 - k) for x in (c, m, y)], -1) / 255
    assert np.abs(loaded - expected).max() <= 1


def test_cmyk_with_a_broken_profile_falls_back_to_the_standard_conversion():
    cmyk = Image.new("CMYK", (8, 8), (10, 20, 30, 40))
    cmyk.info["icc_profile"] = b"not a profile"
    from luvc.images import to_rgb

    assert to_rgb(cmyk, "x").getpixel((0, 0)) == cmyk.convert("RGB").getpixel((0, 0))


def test_an_exif_rotated_photo_comes_upright_and_says_so():
    upright = np.zeros((30, 20, 3), np.uint8)  # 20 wide, 30 tall: a portrait photo
    upright[:5] = 255  # a white band along its top edge
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # how a phone stores it: on its side
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer must rotate it 90 degrees clockwise
    loaded = _roundtrip(stored, "PNG", exif=exif.tobytes())
    assert loaded.size == (20, 30)
    assert np.asarray(loaded)[:5].min() > 200 and np.asarray(loaded)[-5:].max() < 50
    assert arrival_note(loaded) == "turned upright: rotated 90° clockwise per its EXIF orientation"
    assert arrival_note(_roundtrip(Image.fromarray(upright))) == ""


@pytest.mark.skipif(not Path("/proc/self/mem").is_file(), reason="needs Linux's /proc (a file whose reads fail)")
def test_a_file_that_cannot_be_read_is_not_called_damaged():
    """An I/O error reading the file (here EIO: /proc/self/mem at offset 0) is about the file, not its bytes."""
    with pytest.raises(LuvcError, match=r"Cannot read /proc/self/mem \(Input/output error\); check that it is a"):
        load_image("/proc/self/mem")


def test_an_animation_is_noted_and_a_cameras_extra_pictures_are_not():
    frames = [Image.new("RGB", (32, 24), (40 * n, 0, 0)) for n in range(3)]
    for image_format in ("GIF", "PNG", "WEBP"):
        buffer = io.BytesIO()
        frames[0].save(buffer, format=image_format, save_all=True, append_images=frames[1:], duration=100)
        note = arrival_note(decode_image(buffer.getvalue(), "clip"))
        assert note.startswith(f"the first of 3 frames of an animated {image_format} (to run them all"), note
    buffer = io.BytesIO()
    frames[0].save(buffer, format="MPO", save_all=True, append_images=frames[1:2])  # a photo and its preview
    photo = decode_image(buffer.getvalue(), "photo")
    assert arrival_note(photo) == "" and photo.getpixel((0, 0)) == (0, 0, 0)
