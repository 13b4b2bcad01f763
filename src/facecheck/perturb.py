"""Perturbations for protocol P5: what re-saving and rescaling an image do to a detector.

Each perturbation turns a decoded picture into new file bytes, so the perturbed copy takes
the same decode -> features path as any upload and is cached under its own content hash.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from .imageio import load_image


def jpeg(quality: int) -> Callable[[Image.Image], bytes]:
    """Re-save as JPEG at ``quality`` (what a messenger or a web form does to a photo)."""

    def apply(image: Image.Image) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=quality)
        return buf.getvalue()

    return apply


def rescale(factor: float) -> Callable[[Image.Image], bytes]:
    """Resize by ``factor`` and back (bilinear), saved losslessly so only the resize acts."""

    def apply(image: Image.Image) -> bytes:
        w, h = image.size
        small = image.resize(
            (max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BILINEAR
        )
        buf = io.BytesIO()
        small.resize((w, h), Image.Resampling.BILINEAR).save(buf, format="PNG")
        return buf.getvalue()

    return apply


PERTURBATIONS: dict[str, Callable[[Image.Image], bytes]] = {
    "jpeg70": jpeg(70),
    "resize0.5": rescale(0.5),
}


def perturb(source: str | Path | bytes, name: str) -> bytes:
    """The bytes of ``source`` after perturbation ``name``."""
    if name not in PERTURBATIONS:
        raise KeyError(f"unknown perturbation {name!r}; choose from {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[name](load_image(source).image)
