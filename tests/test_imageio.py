"""Hardened decoding, in detail: pixel values after conversion, EXIF, limits (the corpus of
malformed files with their outcomes is tests/test_corpus.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facecheck.image import decode as imageio
from facecheck.image.decode import (
    AnimatedImageError,
    BadDimensionsError,
    CorruptImageError,
    EmptyFileError,
    ImageTooLargeError,
    NotAnImageError,
    decode,
    load_image,
)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _face_rgb(shared_data) -> Image.Image:
    return Image.open(shared_data / "rff" / "real" / "real_00001.jpg").convert("RGB")


def test_rgb_jpeg_decodes_with_hash(shared_data):
    path = shared_data / "rff" / "real" / "real_00001.jpg"
    out = load_image(path)
    assert out.image.mode == "RGB" and out.image.size == (256, 256)
    assert out.sha256 == imageio.content_hash(path.read_bytes())
    assert out.format == "JPEG"


def test_truncated_and_corrupted_jpeg(shared_data):
    data = (shared_data / "rff" / "real" / "real_00002.jpg").read_bytes()
    for cut in (len(data) // 2, 600, 200):
        with pytest.raises((CorruptImageError, NotAnImageError)):
            decode(data[:cut])
    damaged = bytearray(data)
    damaged[200:2000] = b"\x00" * 1800  # wipes the tables and the start of the scan
    with pytest.raises((CorruptImageError, NotAnImageError)):
        decode(bytes(damaged))


def test_modes_convert_to_rgb(shared_data):
    rgb = _face_rgb(shared_data)
    arr = np.asarray(rgb)
    cases = {
        "L": _save(rgb.convert("L"), "PNG"),
        "1": _save(rgb.convert("1"), "PNG"),
        "P": _save(rgb.convert("P"), "PNG"),
        "CMYK": _save(rgb.convert("CMYK"), "JPEG", quality=95),
        "I;16": _save(Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257), "PNG"),
        "LA": _save(rgb.convert("LA"), "PNG"),
        "RGBA": _save(rgb.convert("RGBA"), "PNG"),
        "webp": _save(rgb, "WEBP", quality=90),
        "bmp": _save(rgb, "BMP"),
        "tiff": _save(rgb, "TIFF"),
    }
    for mode, data in cases.items():
        out = decode(data, name=mode)
        assert out.image.mode == "RGB", mode
        assert out.image.size == rgb.size, mode
    # 16-bit grey is scaled into 8 bits, not clipped to white.
    grey16 = np.asarray(decode(cases["I;16"]).image)[..., 0].astype(int)
    grey8 = np.asarray(rgb.convert("L")).astype(int)
    assert np.abs(grey16 - grey8).max() <= 1
    # CMYK round trip stays close to the original colours.
    assert np.abs(np.asarray(decode(cases["CMYK"]).image).astype(int) - arr).mean() < 12


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (64, 64), (255, 0, 0, 0))  # fully transparent red
    img.paste((0, 0, 255, 255), (0, 0, 32, 64))  # opaque blue left half
    out = np.asarray(decode(_save(img, "PNG")).image)
    assert tuple(out[10, 10]) == (0, 0, 255)
    assert tuple(out[10, 50]) == (255, 255, 255)
    pal = img.convert("P")  # palette with transparency
    out = np.asarray(decode(_save(pal, "PNG", transparency=pal.getpixel((50, 10)))).image)
    assert tuple(out[10, 50]) == (255, 255, 255)


def test_exif_orientation_is_applied(shared_data):
    rgb = _face_rgb(shared_data).crop((0, 0, 256, 160))  # landscape, so rotation shows
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode(_save(rgb, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.image.size == (160, 256)
    upright = np.asarray(rgb.transpose(Image.Transpose.ROTATE_270)).astype(int)
    assert np.abs(np.asarray(out.image).astype(int) - upright).mean() < 4


def test_float_tiff():
    arr = np.linspace(-1, 3, 64 * 64, dtype=np.float32).reshape(64, 64)
    out = decode(_save(Image.fromarray(arr, mode="F"), "TIFF"))
    assert out.image.mode == "RGB"
    px = np.asarray(out.image)[..., 0]
    assert px.min() == 0 and px.max() == 255


def test_dimension_limits(shared_data):
    with pytest.raises(BadDimensionsError):
        decode(_save(Image.new("RGB", (8, 8)), "PNG"))
    with pytest.raises(BadDimensionsError):
        decode(_save(Image.new("RGB", (1000, 20)), "PNG"))
    face = _save(_face_rgb(shared_data), "PNG")
    with pytest.raises(ImageTooLargeError):
        decode(face, max_pixels=10_000)
    assert decode(face).image.size == (256, 256)


def test_animated_gif_rejected_single_frame_accepted():
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(AnimatedImageError):
        decode(buf.getvalue())
    assert decode(_save(frames[0], "GIF")).image.size == (64, 64)


def test_wrong_extension_and_files_on_disk(tmp_path, shared_data):
    png_named_jpg = tmp_path / "photo.jpg"
    png_named_jpg.write_bytes(_save(_face_rgb(shared_data), "PNG"))
    assert load_image(png_named_jpg).format == "PNG"
    with pytest.raises(NotAnImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(NotAnImageError):
        load_image(tmp_path)  # a folder
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(EmptyFileError, match=r"empty\.jpg"):
        load_image(empty)
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * 100)
    with pytest.raises(ImageTooLargeError):
        imageio.read_bytes(big, max_bytes=10)
