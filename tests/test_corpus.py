"""The malformed-and-unusual input corpus: generated files, each with its expected outcome.

Every file is written by this module (nothing downloaded). Each is decoded on its own, then
all of them go through `facecheck check --json` in one batch: a bad file gets its typed
error and never stops the others (0 crashes).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facecheck.cli.main import main
from facecheck.image.decode import ImageError, load_image

OK = "ok"


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas: a decompression bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _gif(frames: int) -> bytes:
    imgs = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")[:frames]]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=frames > 1, append_images=imgs[1:])
    return buf.getvalue()


def _exif_rotated(face: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(face.crop((0, 0, 256, 160)), "JPEG", quality=95, exif=exif.tobytes())


def _with_bad_exif(jpeg: bytes) -> bytes:
    """An APP1 'Exif' segment of garbage right after SOI."""
    junk = b"Exif\x00\x00" + b"\xff\x00garbage" * 8
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(junk) + 2) + junk + jpeg[2:]


# name -> (file name, bytes builder from the real face picture, expected outcome).
# Expected: OK plus the decoded size, or an ImageError code.
Builder = Callable[[Image.Image, bytes], bytes]
CORPUS: dict[str, tuple[str, Builder, tuple[str, tuple[int, int] | None]]] = {
    # -- unusual but valid: decoded to upright 8-bit RGB
    "rgb jpeg": ("rgb.jpg", lambda f, j: j, (OK, (256, 256))),
    "grey png": ("grey.png", lambda f, j: _save(f.convert("L"), "PNG"), (OK, (256, 256))),
    "1-bit png": ("bits.png", lambda f, j: _save(f.convert("1"), "PNG"), (OK, (256, 256))),
    "palette png": ("pal.png", lambda f, j: _save(f.convert("P"), "PNG"), (OK, (256, 256))),
    "cmyk jpeg": ("cmyk.jpg", lambda f, j: _save(f.convert("CMYK"), "JPEG"), (OK, (256, 256))),
    "16-bit grey png": (
        "grey16.png",
        lambda f, j: _save(
            Image.fromarray(np.asarray(f.convert("L")).astype(np.uint16) * 257), "PNG"
        ),
        (OK, (256, 256)),
    ),
    "grey+alpha png": ("la.png", lambda f, j: _save(f.convert("LA"), "PNG"), (OK, (256, 256))),
    "rgba png": ("rgba.png", lambda f, j: _save(f.convert("RGBA"), "PNG"), (OK, (256, 256))),
    "webp": ("face.webp", lambda f, j: _save(f, "WEBP", quality=90), (OK, (256, 256))),
    "bmp": ("face.bmp", lambda f, j: _save(f, "BMP"), (OK, (256, 256))),
    "tiff": ("face.tif", lambda f, j: _save(f, "TIFF"), (OK, (256, 256))),
    "float tiff": (
        "float.tif",
        lambda f, j: _save(
            Image.fromarray(np.asarray(f.convert("L"), np.float32) / 255, "F"), "TIFF"
        ),
        (OK, (256, 256)),
    ),
    "exif rotate 90": ("rot6.jpg", lambda f, j: _exif_rotated(f, 6), (OK, (160, 256))),
    "exif rotate 180": ("rot3.jpg", lambda f, j: _exif_rotated(f, 3), (OK, (256, 160))),
    "exif mirror": ("rot2.jpg", lambda f, j: _exif_rotated(f, 2), (OK, (256, 160))),
    "malformed exif": ("badexif.jpg", lambda f, j: _with_bad_exif(j), (OK, (256, 256))),
    "png named .jpg": ("really_png.jpg", lambda f, j: _save(f, "PNG"), (OK, (256, 256))),
    "jpeg named .png": ("really_jpeg.png", lambda f, j: j, (OK, (256, 256))),
    "single-frame gif": ("one.gif", lambda f, j: _gif(1), (OK, (64, 64))),
    "progressive jpeg": (
        "progressive.jpg",
        lambda f, j: _save(f, "JPEG", quality=90, progressive=True),
        (OK, (256, 256)),
    ),
    "large 4000x3000": (
        "large.jpg",
        lambda f, j: _save(f.resize((4000, 3000)), "JPEG", quality=80),
        (OK, (4000, 3000)),
    ),
    # -- refused, each with its typed error
    "zero bytes": ("empty.jpg", lambda f, j: b"", ("empty_file", None)),
    "text file": ("notes.jpg", lambda f, j: b"not a picture\n" * 20, ("not_an_image", None)),
    "html": ("page.png", lambda f, j: b"<html><body>no</body></html>", ("not_an_image", None)),
    "pdf": (
        "doc.jpg",
        lambda f, j: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
        ("not_an_image", None),
    ),
    "random bytes": (
        "noise.jpg",
        lambda f, j: bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
        ("not_an_image", None),
    ),
    "png signature only": ("sig.png", lambda f, j: b"\x89PNG\r\n\x1a\n", ("not_an_image", None)),
    "jpeg SOI only": ("soi.jpg", lambda f, j: b"\xff\xd8\xff", ("not_an_image", None)),
    "jpeg cut in half": ("half.jpg", lambda f, j: j[: len(j) // 2], ("corrupt_image", None)),
    "jpeg tables wiped": (
        "wiped.jpg",
        lambda f, j: j[:200] + b"\x00" * 1800 + j[2000:],
        ("corrupt_image", None),
    ),
    "png cut in half": (
        "half.png",
        lambda f, j: (p := _save(f, "PNG"))[: len(p) // 2],
        ("corrupt_image", None),
    ),
    "bomb header 60000x60000": (
        "bomb.png",
        lambda f, j: _png_claiming(60000, 60000),
        ("image_too_large", None),
    ),
    "animated gif": ("anim.gif", lambda f, j: _gif(3), ("animated_image", None)),
    "ico": (
        "icon.jpg",
        lambda f, j: _save(Image.new("RGB", (64, 64)), "ICO"),
        ("unsupported_format", None),
    ),
    "8x8 thumbnail": (
        "tiny.png",
        lambda f, j: _save(Image.new("RGB", (8, 8)), "PNG"),
        ("bad_dimensions", None),
    ),
    "1000x20 strip": (
        "strip.png",
        lambda f, j: _save(Image.new("RGB", (1000, 20)), "PNG"),
        ("bad_dimensions", None),
    ),
}


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory) -> dict[str, Path]:
    jpeg_path = shared_data / "rff" / "real" / "real_00001.jpg"
    face = Image.open(jpeg_path).convert("RGB")
    folder = tmp_path_factory.mktemp("corpus")
    paths = {}
    for name, (fname, build, _) in CORPUS.items():
        paths[name] = folder / fname
        paths[name].write_bytes(build(face, jpeg_path.read_bytes()))
    return paths


def test_the_corpus_is_large_and_varied():
    assert len(CORPUS) >= 30
    assert len({fname for fname, _, _ in CORPUS.values()}) == len(CORPUS)
    codes = {expected for _, _, (expected, _) in CORPUS.values()}
    assert codes >= {
        OK,
        "empty_file",
        "not_an_image",
        "corrupt_image",
        "image_too_large",
        "animated_image",
        "unsupported_format",
        "bad_dimensions",
    }


@pytest.mark.parametrize("name", list(CORPUS))
def test_each_file_has_its_expected_outcome(corpus, name):
    expected, size = CORPUS[name][2]
    if expected == OK:
        out = load_image(corpus[name])
        assert out.image.mode == "RGB" and out.image.size == size
    else:
        with pytest.raises(ImageError) as info:
            load_image(corpus[name])
        assert info.value.code == expected
        assert str(corpus[name]) in str(info.value)  # the message names the file


# Decodable, but the face stage finds no face in them: the face dithered to 1 bit, and a
# flat 64x64 colour frame. `check` says so (verdict no_face) instead of scoring them.
NO_FACE = {"1-bit png", "single-frame gif"}


def test_batch_check_scores_the_good_and_reports_the_bad(corpus, capsys):
    # The large image is left out only to keep the test quick; it decodes above.
    files = [str(p) for n, p in corpus.items() if n != "large 4000x3000"]
    code = main(["check", "--json", *files])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 3  # some inputs were invalid, none crashed the batch
    assert [r["input"] for r in lines] == files
    by_name = {Path(r["input"]).name: r for r in lines}
    for name, (fname, _, (expected, _)) in CORPUS.items():
        if name == "large 4000x3000":
            continue
        r = by_name[fname]
        if name in NO_FACE:
            assert r["verdict"] == "no_face" and r["error_code"] == "no_face", name
        elif expected == OK:
            assert r["verdict"] in ("real", "fake") and 0 <= r["fake_probability"] <= 1, name
            assert r["face"]["action"] == "passthrough", name  # the crop itself is scored
        else:
            assert r["verdict"] == "invalid_image" and r["error_code"] == expected, name


@pytest.mark.parametrize("orientation", [3, 6, 8, 2])
def test_exif_rotated_copy_scores_like_the_upright_image(shared_data, orientation):
    """A phone photo stored sideways with an EXIF tag scores as the upright picture does."""
    from facecheck.detector.pipeline import Detector

    face = Image.open(shared_data / "rff" / "fake" / "easy_100_1111.jpg").convert("RGB")
    # Store the pixels as the camera would, so that applying the tag gives `face` back.
    stored = {
        3: Image.Transpose.ROTATE_180,
        6: Image.Transpose.ROTATE_90,
        8: Image.Transpose.ROTATE_270,
        2: Image.Transpose.FLIP_LEFT_RIGHT,
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    sideways = _save(face.transpose(stored), "PNG", exif=exif.tobytes())  # lossless
    upright = _save(face, "PNG")
    det = Detector.load()
    p = det.predict_proba([upright, sideways])[:, 1]
    assert p[0] == pytest.approx(p[1], abs=1e-6)
    assert np.array_equal(np.asarray(load_image(sideways).image), np.asarray(face))
