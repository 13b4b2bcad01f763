"""Perturbations for protocol P5: what re-saving and rescaling an image do to a detector.

Each perturbation turns a decoded picture into new file bytes, so the perturbed copy takes
the same decode -> features path as any upload and is cached under its own content hash.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from .imageio import load_image

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


PERTURBATIONS: dict[str, Perturbation] = {
    "jpeg70": jpeg(70),
    "resize0.5": rescale(0.5),
    "degrade": degrade,
}


def perturb(source: str | Path | bytes, name: str) -> bytes:
    """The bytes of ``source`` after perturbation ``name``, seeded by its content hash."""
    if name not in PERTURBATIONS:
        raise KeyError(f"unknown perturbation {name!r}; choose from {', '.join(PERTURBATIONS)}")
    decoded = load_image(source)
    return PERTURBATIONS[name](decoded.image, int(decoded.sha256[:8], 16))
