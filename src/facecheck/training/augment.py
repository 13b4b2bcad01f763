"""Training-time augmentation as a configurable pipeline (torchvision transforms v2).

A pipeline is written as comma-separated steps, applied in order to uint8 image tensors:

- ``flip``: horizontal flip, p = 0.5 (faces are near-symmetric; vertical flips are not used);
- ``rotate:D``: random rotation within +-D degrees;
- ``jitter:S``: colour jitter, brightness/contrast/saturation +-S;
- ``crop:F``: random resized crop keeping F..1 of the area, back to the input size;
- ``jpeg:LO-HI``: re-encode as JPEG at a random quality in LO..HI (compression the bank's
  uploads will have; protocol P5 shows frozen-feature heads lose recall without it).

``none`` or an empty string means no augmentation. Randomness comes from torch's generator,
so a seeded run is repeatable.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

DEFAULT = "flip,rotate:10,jitter:0.1,crop:0.85,jpeg:60-95"


class JPEG:
    """Re-encode a uint8 (3, H, W) tensor as JPEG at a random quality, with Pillow.

    Pillow's encoder, not torchvision's (deprecated in 0.29), and the same one the P5
    perturbations and the bank's uploads go through.
    """

    def __init__(self, lo: int, hi: int):
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"JPEG quality range must be within 1-100, got {lo}-{hi}")
        self.lo, self.hi = lo, hi

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        q = int(torch.randint(self.lo, self.hi + 1, (1,)))
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=q)
        arr = np.asarray(Image.open(buf).convert("RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _step(name: str, arg: str, size: int) -> v2.Transform:
    if name == "flip":
        return v2.RandomHorizontalFlip()
    if name == "rotate":
        return v2.RandomRotation(float(arg or 10))
    if name == "jitter":
        s = float(arg or 0.1)
        return v2.ColorJitter(brightness=s, contrast=s, saturation=s)
    if name == "crop":
        return v2.RandomResizedCrop(size, scale=(float(arg or 0.85), 1.0), antialias=True)
    if name == "jpeg":
        lo, _, hi = (arg or "60-95").partition("-")
        return JPEG(int(lo), int(hi or lo))
    raise ValueError(
        f"unknown augmentation step {name!r}: use flip, rotate:D, jitter:S, crop:F, jpeg:LO-HI"
    )


def build(spec: str | None, size: int) -> v2.Transform | None:
    """The pipeline for ``spec`` at input ``size`` (None when there is nothing to do)."""
    if not spec or spec == "none":
        return None
    steps = []
    for part in spec.split(","):
        name, _, arg = part.strip().partition(":")
        steps.append(_step(name, arg, size))
    return v2.Compose(steps)


def apply(pipeline: v2.Transform | None, batch: torch.Tensor) -> torch.Tensor:
    """Augment each uint8 image of a (N, 3, H, W) batch independently; a (N, R, 3, H, W)
    batch of region crops is augmented crop by crop."""
    if pipeline is None:
        return batch
    if batch.dim() == 5:
        return apply(pipeline, batch.flatten(0, 1)).view(batch.shape)
    return torch.stack([pipeline(img) for img in batch])
