"""Decode untrusted image bytes into an RGB picture, or fail with a typed, readable error.

Every entry point (training, evaluation, ``check``, the service) decodes through
:func:`load_image`, so an image is never read two different ways.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# A 50-megapixel photo is larger than any ID selfie; past this we refuse rather than
# let a small compressed file expand into gigabytes (a decompression bomb).
MAX_PIXELS = 50_000_000
# Uploads bigger than this are refused before decoding.
MAX_BYTES = 30 * 1024 * 1024
# Faces are never 1 px wide; a tiny or absurdly thin picture is not a face photo.
MIN_SIDE = 16
MAX_ASPECT = 8.0

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"})
# What a folder's image files are named (a folder given to check, score or a manifest).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


class ImageError(ValueError):
    """Base class: the input could not be turned into a picture to score."""

    code = "invalid_image"


class EmptyFileError(ImageError):
    code = "empty_file"


class NotAnImageError(ImageError):
    code = "not_an_image"


class UnsupportedFormatError(ImageError):
    code = "unsupported_format"


class CorruptImageError(ImageError):
    code = "corrupt_image"


class ImageTooLargeError(ImageError):
    code = "image_too_large"


class BadDimensionsError(ImageError):
    code = "bad_dimensions"


class AnimatedImageError(ImageError):
    code = "animated_image"


@dataclass(frozen=True)
class DecodedImage:
    """An upright 8-bit RGB picture plus what we learned while decoding it."""

    image: Image.Image
    sha256: str
    format: str
    original_mode: str


def content_hash(data: bytes) -> str:
    """SHA-256 of the raw bytes: the identity of an image for splits and caches."""
    return hashlib.sha256(data).hexdigest()


def read_bytes(source: str | Path | bytes, *, max_bytes: int = MAX_BYTES) -> bytes:
    """Read a path (or pass bytes through), refusing empty and oversized inputs."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise NotAnImageError(f"{path}: no such file")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageTooLargeError(f"{path}: {size} bytes is over the {max_bytes}-byte limit")
        data = path.read_bytes()
    if not data:
        raise EmptyFileError("the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"{len(data)} bytes is over the {max_bytes}-byte limit")
    return data


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency onto white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale the used range into 8 bits rather than clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / 65535.0 if hi > 255 else 1.0
        grey = np.clip(arr * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        grey = ((arr - lo) / (hi - lo) * 255.0) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV: Pillow's converters are correct for these.
    return img.convert("RGB")


def decode(data: bytes, *, max_pixels: int = MAX_PIXELS, name: str = "image") -> DecodedImage:
    """Decode bytes into an upright RGB image, or raise an :class:`ImageError` subclass."""
    if not data:
        raise EmptyFileError(f"{name}: the file is empty (0 bytes)")
    digest = content_hash(data)
    try:
        with warnings.catch_warnings():
            # Pillow warns (then errors at 2x) on decompression bombs; we apply our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            if fmt not in ALLOWED_FORMATS:
                raise UnsupportedFormatError(f"{name}: {fmt} images are not accepted")
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"{name}: {width}x{height} is over the {max_pixels:,}-pixel limit"
                )
            if getattr(img, "n_frames", 1) > 1 and fmt != "MPO":
                # An animation has no single picture to judge; MPO (phone JPEGs) is a still
                # with a preview frame, and its first frame is the photo.
                raise AnimatedImageError(f"{name}: animated {fmt} with {img.n_frames} frames")
            original_mode = img.mode
            img.load()  # forces full decoding: truncated data fails here, not later
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise NotAnImageError(f"{name}: not a recognised image file") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name}: decompression bomb refused ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptImageError(f"{name}: corrupt or truncated image ({exc})") from exc

    try:
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # malformed EXIF must not lose the picture
        warnings.warn(f"{name}: EXIF orientation ignored ({exc})", stacklevel=2)
    width, height = img.size
    if min(width, height) < MIN_SIDE:
        raise BadDimensionsError(f"{name}: {width}x{height} is smaller than {MIN_SIDE} px")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise BadDimensionsError(f"{name}: aspect ratio {width}x{height} is not a face photo")
    return DecodedImage(_to_rgb(img), digest, fmt, original_mode)


def load_image(source: str | Path | bytes, *, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Read and decode a file path or raw bytes (see :func:`decode`)."""
    name = "image" if isinstance(source, bytes | bytearray | memoryview) else str(source)
    try:
        data = read_bytes(source)
    except ImageError as exc:
        if name != "image" and not str(exc).startswith(name):
            raise type(exc)(f"{name}: {exc}") from None
        raise
    return decode(data, max_pixels=max_pixels, name=name)
