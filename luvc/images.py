"""Images for runs without a user image: a seeded synthetic scene, and loading (files or bytes) with clear errors.

What the model sees is the picture an image viewer shows: upright as its EXIF orientation says, and in 8-bit RGB
(``to_rgb``): 16-bit greyscale scaled, not clipped; transparency composited over white, as ``transformers``' own
``convert_to_rgb`` does; CMYK through its embedded ICC profile when it has one. Pixel values no viewer can show
without a guess (a float image outside 0-1, a 32-bit one outside 16 bits) are refused with the fix.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from luvc.errors import critical
from luvc.paths import FOLDER, not_a_file

DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192  # 67 MP: larger than any phone photo, refused before decoding (a bomb is never
# expanded); the most any bucket takes is 8192 a side
MIN_IMAGE_SIDE = 8  # a smaller image holds nothing a vision encoder can read
MAX_ASPECT_RATIO = 200  # Qwen-VL's processors refuse more; no family reads a thinner strip
# every image is opened here and its size checked against the limit above before it is decoded, so Pillow's own
# warning for images past 89 MP would only print a second line beside that refusal
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def synthetic_image(height: int = 224, width: int = 224, seed: int = 0) -> Image.Image:
    """A deterministic RGB scene: smooth gradients, a few flat rectangles with sharp edges, and mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0.5 * np.sin(x / 17 + y / 23)], -1)
    for _ in range(4):
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        image[top : top + height // 3, left : left + width // 3] = rng.random(3)
    image += rng.normal(0.0, 0.02, image.shape)
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8), mode="RGB")


def load_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Open ``path`` as RGB, with an error naming the file when it is missing, not an image, or of a size no model
    takes (see :func:`check_image_size`; ``max_pixels`` defaults to ``DEFAULT_MAX_IMAGE_PIXELS``)."""
    path = Path(path)
    problem = not_a_file(path)
    if problem == FOLDER:
        critical(f"{path} is a folder, not an image; pass an image file to --image (PNG or JPEG).")
    if problem == "does not exist":
        critical(f"Image file {path} does not exist; pass an existing file to --image.")
    if problem is not None:
        critical(f"Image file {path} {problem}; pass an image file to --image (PNG or JPEG).")
    return _open(path, str(path), max_pixels)


def decode_image(data: bytes, name: str, max_pixels: int | None = None) -> Image.Image:
    """Decode an encoded image (PNG, JPEG, ...) received as bytes; ``name`` says where it came from in errors."""
    return _open(io.BytesIO(data), name, max_pixels)


# what Pillow raises for bytes it cannot read as an image: an unknown format, or one it knows, damaged or cut short
UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError)


def image_format(data: bytes) -> str | None:
    """The format Pillow reads in the header of the encoded image ``data`` (``"PNG"``, ``"JPEG"``, ...); None when
    it is no image Pillow knows."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format
    except (Image.DecompressionBombError, *UNREADABLE):
        return None


def check_image_size(width: int, height: int, name: str, max_pixels: int | None = None) -> None:
    """Refuse an image of more than ``max_pixels`` pixels (default ``DEFAULT_MAX_IMAGE_PIXELS``), a side under
    ``MIN_IMAGE_SIDE`` or an aspect ratio beyond ``MAX_ASPECT_RATIO``:1, naming the size and the fix."""
    limit = _limit(max_pixels)
    if width * height > limit:
        critical(
            f"{name} is {width}x{height} ({width * height / 1e6:.0f} MP), more than the {limit / 1e6:.0f} MP an image "
            "may have; downscale it (a model sees a few megapixels at most)."
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        critical(f"{name} is {width}x{height}; an image needs at least {MIN_IMAGE_SIDE} pixels a side.")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        critical(
            f"{name} is {width}x{height}, an aspect ratio beyond {MAX_ASPECT_RATIO}:1 that no model takes; crop it "
            "into parts of at most that ratio."
        )


def check_image_file(path: str | Path, name: str | None = None, max_pixels: int | None = None) -> None:
    """Read ``path``'s header only and refuse what :func:`load_image` would (not an image, a size no model takes)."""
    with _opened(Path(path), name or str(path), max_pixels):
        pass


@contextlib.contextmanager
def _opened(source, name: str, max_pixels: int | None) -> Iterator[Image.Image]:
    """The image with only its header read, its size checked; errors reading or decoding it name ``name``: a file
    whose format Pillow recognised but cannot decode is called damaged or cut short, not of the wrong format."""
    image_format = None
    try:
        with Image.open(source) as image:
            image_format = image.format
            width, height = image.size
            check_image_size(width, height, name, max_pixels)
            yield image
    except Image.DecompressionBombError:  # Pillow's own limit, met while reading the header: far past ours
        critical(f"{name} has more than {_limit(max_pixels) / 1e6:.0f} MP, the most an image may have; downscale it.")
    except UNREADABLE as error:
        if isinstance(error, UnidentifiedImageError):
            critical(f"Cannot read {name} as an image (not a known image format); use a PNG or JPEG file.")
        if isinstance(error, OSError) and error.errno is not None:  # the file itself (permissions, I/O), not its bytes
            critical(f"Cannot read {name} ({error.strerror or error}); check that it is a readable file.")
        # Pillow recognised the format from the first bytes (its format is known once the header is read)
        held = f"{image_format} image" if image_format else "image"
        critical(
            f"{name} is a damaged or cut-short {held} ({str(error) or type(error).__name__}); use an intact copy of "
            "the file."
        )


def _open(source, name: str, max_pixels: int | None) -> Image.Image:
    """Read the header, check the size, then decode: an oversized image is refused before it is expanded. The image
    comes back upright and in RGB (``to_rgb``); ``info["exif_orientation"]`` keeps an orientation that was applied,
    ``info["animation_frames"]`` the frame count and format of an animation, whose first frame it is."""
    with _opened(source, name, max_pixels) as image:
        orientation = image.getexif().get(ORIENTATION_TAG, 1)
        frames = getattr(image, "n_frames", 1) if image.format in ANIMATED_FORMATS else 1
        upright = ImageOps.exif_transpose(image)
        rgb = to_rgb(upright, name)
        if orientation in ROTATIONS and orientation != 1:
            rgb.info["exif_orientation"] = orientation
        if frames > 1:
            rgb.info["animation_frames"] = (frames, image.format)
        return rgb


ORIENTATION_TAG = 0x0112
ANIMATED_FORMATS = ("GIF", "PNG", "WEBP")  # of many frames, an animation (APNG reads as PNG); a camera's MPO holds
# other pictures after the first (previews, depth), and the first is the photo
ROTATIONS = {1: "upright", 2: "mirrored", 3: "rotated 180°", 4: "flipped", 5: "mirrored and rotated 90° clockwise"}
ROTATIONS |= {6: "rotated 90° clockwise", 7: "mirrored and rotated 90° counter-clockwise"}
ROTATIONS |= {8: "rotated 90° counter-clockwise"}
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _through_icc_profile(image: Image.Image) -> Image.Image | None:
    """``image`` converted to sRGB through its embedded ICC profile; ``None`` when the profile cannot be used (a broken
    one, or a Pillow without LittleCMS): the plain conversion follows, as a viewer without the profile would show."""
    try:
        from PIL import ImageCms

        profile = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
        return ImageCms.profileToProfile(image, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImportError, OSError, ValueError) as error:  # ImageCms.PyCMSError is an OSError
        del error
        return None


def arrival_note(image: Image.Image) -> str:
    """How the image was read, for messages: turned upright (``"turned upright: rotated 90° clockwise per its EXIF
    orientation"``), the first frame of an animation taken (``"the first of 12 frames of an animated GIF"``); ``""``
    when it came upright and still."""
    orientation = image.info.get("exif_orientation")
    notes = [f"turned upright: {ROTATIONS[orientation]} per its EXIF orientation"] if orientation else []
    if "animation_frames" in image.info:
        frames, image_format = image.info["animation_frames"]
        notes.append(
            f"the first of {frames} frames of an animated {image_format} (to run them all, save them as images in a "
            "folder and pass it as a video)"
        )
    return "; ".join(notes)


def to_rgb(image: Image.Image, name: str) -> Image.Image:
    """``image`` in 8-bit RGB as a viewer shows it (see the module docstring); a mode with no faithful RGB is refused
    with one line naming ``name`` and the fix."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            critical(
                f"{name} is a 32-bit integer image with values outside 0-65535, which has no standard brightness; "
                "save it as an 8- or 16-bit PNG."
            )
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
            critical(
                f"{name} is a floating-point image with values outside 0-1, which has no standard brightness; save "
                "it as an 8- or 16-bit PNG."
            )
        return Image.fromarray(np.rint(values * 255).astype(np.uint8), "L").convert("RGB")
    if mode == "CMYK" and image.info.get("icc_profile"):
        converted = _through_icc_profile(image)
        if converted is not None:
            return converted
    try:
        if mode in ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA") if mode != "La" else image.convert("LA").convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as error:
        critical(f"{name} is a {mode} image, which cannot be shown as RGB ({error}); save it as a PNG or JPEG.")


def _limit(max_pixels: int | None) -> int:
    return DEFAULT_MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
