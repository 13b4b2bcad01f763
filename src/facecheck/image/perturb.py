"""Processing chains: what a bank's stream does to a photo before facecheck sees it.

Protocol P5 (JPEG q70, a 0.5x resize round trip) and P8's chains (JPEG q60-q90, down- and
upscaling, the face inside a larger photo, PNG with alpha, screenshot-like resampling, and a
print-and-recapture of an ID-card portrait). Each chain turns a decoded picture into new
file bytes, so the processed copy takes the same decode -> face stage -> features path as
any upload and is cached under its own content hash. Every random choice is drawn from the
picture's content hash and the chain's name: the same input gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from facecheck.image.decode import load_image

# A perturbation maps (picture, per-image seed) to new file bytes.
Perturbation = Callable[[Image.Image, int], bytes]


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _rescaled(image: Image.Image, factor: float) -> Image.Image:
    w, h = image.size
    small = image.resize(
        (max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BILINEAR
    )
    return small.resize((w, h), Image.Resampling.BILINEAR)


def jpeg(quality: int) -> Perturbation:
    """Re-save as JPEG at ``quality`` (what a messenger or a web form does to a photo)."""
    return lambda image, _seed: _encode(image, "JPEG", quality=quality)


def rescale(factor: float) -> Perturbation:
    """Resize by ``factor`` and back (bilinear), saved losslessly so only the resize acts."""
    return lambda image, _seed: _encode(_rescaled(image, factor), "PNG")


def degrade(image: Image.Image, seed: int) -> bytes:
    """Training augmentation: rescale by U(0.4, 1.0) and back, then JPEG at U(50, 95).

    Drawn per image from its content hash (reproducible, cacheable), and deliberately not
    the fixed q70 / 0.5x of the P5 test perturbations, so P5 then measures generalisation
    to them rather than memory of them.
    """
    rng = random.Random(seed)
    factor = rng.uniform(0.4, 1.0)
    quality = rng.randint(50, 95)
    return _encode(_rescaled(image, factor), "JPEG", quality=quality)


def seeded_rng(*parts: object) -> np.random.Generator:
    """Draws named by ``parts`` (e.g. a picture's seed and a chain's name): the same parts
    give the same draws, and other parts independent ones."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _rng(seed: int, chain: str) -> np.random.Generator:
    """The chain's own draws for this picture (independent of every other chain's)."""
    return seeded_rng(seed, chain)


def resize(factor: float) -> Perturbation:
    """Down- or upscale by ``factor`` and keep that size (Lanczos, as photo tools do),
    saved as JPEG q90: a smaller upload, or a small face blown up."""

    def apply(image: Image.Image, _seed: int) -> bytes:
        w, h = image.size
        size = (max(16, round(w * factor)), max(16, round(h * factor)))
        return _encode(image.resize(size, Image.Resampling.LANCZOS), "JPEG", quality=90)

    return apply


def _background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A plausible photo background: a muted, smooth colour field with soft blobs and fine
    sensor noise (no faces, so the face stage finds exactly the pasted one). Drawn at a
    quarter of the size and enlarged: it is smooth anyway, and 16x cheaper."""
    w, h = size
    sw, sh = max(8, w // 4), max(8, h // 4)
    small = rng.uniform(40, 215, size=(6, 8, 3)).astype(np.uint8)
    field = Image.fromarray(small).resize((sw, sh), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(6):
        x, y = rng.uniform(0, sw), rng.uniform(0, sh)
        r = rng.uniform(0.05, 0.2) * sw
        colour = tuple(int(c) for c in rng.integers(30, 225, 3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    field = field.filter(ImageFilter.GaussianBlur(sw / 60)).resize((w, h), Image.Resampling.BICUBIC)
    pixels = np.asarray(field, np.float32)
    pixels = 0.4 * pixels + 0.6 * pixels.mean(axis=2, keepdims=True)  # muted, as rooms are
    pixels += rng.normal(0, 3, size=(h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def in_photo(scale: float = 1.0, size: tuple[int, int] = (1200, 900)) -> Perturbation:
    """The face (rescaled by ``scale``) pasted into a larger photo at a seeded place, its
    edges feathered, saved as JPEG q90: a selfie with background, which the face stage must
    find and crop again."""

    def apply(image: Image.Image, seed: int) -> bytes:
        rng = _rng(seed, f"in_photo{scale}")
        face = image.convert("RGB")
        if scale != 1.0:
            fw, fh = face.size
            face = face.resize((round(fw * scale), round(fh * scale)), Image.Resampling.BICUBIC)
        fw, fh = face.size
        canvas = _background(rng, size)
        x = int(rng.integers(0, max(1, size[0] - fw)))
        y = int(rng.integers(0, max(1, size[1] - fh)))
        edge = max(2, min(fw, fh) // 24)
        mask = Image.new("L", (fw, fh), 0)
        ImageDraw.Draw(mask).rectangle((edge, edge, fw - edge, fh - edge), fill=255)
        canvas.paste(face, (x, y), mask.filter(ImageFilter.GaussianBlur(edge / 2)))
        return _encode(canvas, "JPEG", quality=90)

    return apply


def png_alpha(image: Image.Image, seed: int) -> bytes:
    """An RGBA PNG whose alpha is opaque over the face and partly transparent in a border
    (an export from an editor or a phone's cut-out): the decoder must flatten it."""
    rng = _rng(seed, "png_alpha")
    rgba = image.convert("RGBA")
    w, h = rgba.size
    alpha = np.full((h, w), 255, np.uint8)
    border = max(1, int(min(w, h) * rng.uniform(0.02, 0.06)))
    alpha[:border], alpha[-border:] = 0, 0
    alpha[:, :border], alpha[:, -border:] = 0, 0
    rgba.putalpha(Image.fromarray(alpha))
    return _encode(rgba, "PNG")


def screenshot(image: Image.Image, seed: int) -> bytes:
    """A screenshot of the photo shown on a screen: displayed at a non-integer zoom
    (bilinear), captured, then scaled by the OS (bicubic) and saved as PNG."""
    rng = _rng(seed, "screenshot")
    w, h = image.size
    zoom = rng.uniform(1.15, 1.6)
    shown = image.convert("RGB").resize(
        (round(w * zoom), round(h * zoom)), Image.Resampling.BILINEAR
    )
    back = rng.uniform(0.6, 0.9)
    size = (round(shown.width * back), round(shown.height * back))
    return _encode(shown.resize(size, Image.Resampling.BICUBIC), "PNG")


def print_recapture(image: Image.Image, seed: int) -> bytes:
    """An ID-card portrait printed and photographed again: print blur and halftone dots,
    paper tone, the card photographed at a slant (perspective) on a table, a glare spot,
    sensor noise, and the camera's JPEG."""
    rng = _rng(seed, "print_recapture")
    face = image.convert("RGB")
    w, h = face.size
    # Print: dot gain (blur), a halftone screen, paper white and ink black not reached.
    printed = np.asarray(face.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.2))), np.float64)
    period = rng.uniform(3.0, 4.5)
    yy, xx = np.mgrid[0:h, 0:w]
    angle = np.deg2rad(rng.uniform(10, 40))
    screen = np.cos(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    printed = printed + 10 * screen[..., None]
    printed = 18 + printed * (225 - 18) / 255
    card = Image.fromarray(np.clip(printed, 0, 255).astype(np.uint8))
    # Recapture: the card on a table, photographed at a slant, larger than the print.
    out_w, out_h = int(w * 1.6), int(h * 1.6)
    table = _background(rng, (out_w, out_h))
    left, top = (out_w - w) // 2, (out_h - h) // 2
    table.paste(card, (left, top))
    jitter = rng.uniform(-0.06, 0.06, size=8) * np.array([out_w, out_h] * 4)
    # PIL's QUAD: the source points of the output's upper-left, lower-left, lower-right and
    # upper-right corners.
    corners = np.array([0, 0, 0, out_h, out_w, out_h, out_w, 0], np.float64) + jitter
    table = table.transform(
        (out_w, out_h),
        Image.Transform.QUAD,
        tuple(float(c) for c in corners),
        Image.Resampling.BICUBIC,
    )
    # Glare: a soft bright spot where the lamp reflects off the laminate.
    gx, gy = rng.uniform(0.2, 0.8) * out_w, rng.uniform(0.2, 0.8) * out_h
    radius = rng.uniform(0.1, 0.25) * out_w
    yy, xx = np.mgrid[0:out_h, 0:out_w]
    glare = np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * radius**2)) * rng.uniform(60, 120)
    shot = np.asarray(table, np.float64) + glare[..., None] + rng.normal(0, 2.5, (out_h, out_w, 3))
    shot_img = Image.fromarray(np.clip(shot, 0, 255).astype(np.uint8))
    return _encode(shot_img, "JPEG", quality=int(rng.integers(75, 91)))


def field(image: Image.Image, seed: int) -> bytes:
    """Training augmentation for the field (issue 26): one processing chain per image, its
    kind and parameters drawn from the picture's hash, from a wider range than P8 tests.

    Kinds: a down-and-up resample then JPEG (``degrade``'s); a size change kept (x0.5-3,
    random filter) then JPEG; a blur then JPEG; the face inside a larger photo at x0.7-2.5
    (so training passes through the face stage as serving does); a plain JPEG re-save.
    Screenshots, PNG with alpha and print-and-recapture are left out on purpose: P8 then
    measures chains the detector never trained on.
    """
    rng = _rng(seed, "field")
    kind = int(rng.integers(0, 5))
    quality = int(rng.integers(55, 96))
    rgb = image.convert("RGB")
    w, h = rgb.size
    if kind == 0:
        out = _rescaled(rgb, float(rng.uniform(0.35, 1.0)))
    elif kind == 1:
        factor = float(np.exp(rng.uniform(np.log(0.5), np.log(3.0))))
        filters = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)
        size = (max(16, round(w * factor)), max(16, round(h * factor)))
        out = rgb.resize(size, filters[int(rng.integers(0, 3))])
    elif kind == 2:
        out = rgb.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    elif kind == 3:
        # At most a 1000 px face, on a canvas with room around it.
        scale = min(float(rng.uniform(0.7, 2.5)), 1000 / max(w, h))
        canvas = (
            max(int(rng.integers(900, 1400)), round(w * scale * 1.4)),
            max(int(rng.integers(700, 1100)), round(h * scale * 1.4)),
        )
        out = Image.open(io.BytesIO(in_photo(round(scale, 2), canvas)(rgb, seed))).convert("RGB")
    else:
        out = rgb
    return _encode(out, "JPEG", quality=quality)


PERTURBATIONS: dict[str, Perturbation] = {
    # P5
    "jpeg70": jpeg(70),
    "resize0.5": rescale(0.5),
    # P8's chains (P5's two are among them)
    "jpeg60": jpeg(60),
    "jpeg80": jpeg(80),
    "jpeg90": jpeg(90),
    "down0.5": resize(0.5),
    "up2": resize(2.0),
    "up3": resize(3.0),
    "in_photo": in_photo(1.0),
    "in_photo_up2": in_photo(2.0),
    "png_alpha": png_alpha,
    "screenshot": screenshot,
    "print_recapture": print_recapture,
    # training augmentation
    "degrade": degrade,
    "field": field,
}
# Protocol P8's processing chains, in report order.
P8_CHAINS = (
    "jpeg90",
    "jpeg80",
    "jpeg70",
    "jpeg60",
    "down0.5",
    "resize0.5",
    "up2",
    "up3",
    "in_photo",
    "in_photo_up2",
    "png_alpha",
    "screenshot",
    "print_recapture",
)


# Bumped whenever a perturbation's pixels change, so that features cached for the copies
# (facecheck.evaluation.evaluate.extract_perturbed) are never reused across versions.
PERTURB_VERSION = 1


def perturb(source: str | Path | bytes, name: str) -> bytes:
    """The bytes of ``source`` after perturbation ``name``, seeded by its content hash."""
    if name not in PERTURBATIONS:
        raise KeyError(f"unknown perturbation {name!r}; choose from {', '.join(PERTURBATIONS)}")
    decoded = load_image(source)
    return PERTURBATIONS[name](decoded.image, int(decoded.sha256[:8], 16))
