"""Where the eyes, nose and mouth are: region boxes and crops from the face stage's keypoints.

The four regions are those of the rff fakes' file names, in their order: left eye, right eye,
nose, mouth, *as seen in the picture*. Boxes are placed from BlazeFace's keypoints and sized in
units of the inter-ocular distance (IOD), so they follow the face whatever its framing.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image

from facecheck.image.geometry import crop_padded

REGIONS = ("left_eye", "right_eye", "nose", "mouth")

# Region boxes in units of the inter-ocular distance (IOD), centred on a keypoint with an
# offset: (keypoint, dx, dy, width, height). Sized on rff crops so that each box holds the
# whole feature (brow to lower lid; nostrils and bridge; both lips) and no other.
_BOXES = {
    "left_eye": ("left_eye", 0.0, -0.05, 0.8, 0.5),
    "right_eye": ("right_eye", 0.0, -0.05, 0.8, 0.5),
    "nose": ("nose", 0.0, -0.2, 0.6, 0.8),
    "mouth": ("mouth", 0.0, 0.0, 1.0, 0.5),
}

# Keypoints of a typical rff crop as fractions of its side (BlazeFace medians), for pictures
# with no detected keypoints.
TYPICAL_KEYPOINTS = {
    "left_eye": (0.38, 0.50),
    "right_eye": (0.62, 0.50),
    "nose": (0.50, 0.64),
    "mouth": (0.50, 0.77),
}

Keypoints = Mapping[str, tuple[float, float]]


def typical_keypoints(size: tuple[int, int]) -> dict[str, tuple[float, float]]:
    w, h = size
    return {k: (x * w, y * h) for k, (x, y) in TYPICAL_KEYPOINTS.items()}


def eye_frame(keypoints: Keypoints) -> tuple[float, float, float]:
    """The eyes' midpoint (x, y) and the inter-ocular distance (at least 4 px)."""
    (lx, ly), (rx, ry) = keypoints["left_eye"], keypoints["right_eye"]
    return (lx + rx) / 2, (ly + ry) / 2, max(float(np.hypot(rx - lx, ry - ly)), 4.0)


def region_boxes(keypoints: Keypoints, size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """Pixel boxes (x0, y0, x1, y1) of the four regions, clipped to the picture."""
    iod = eye_frame(keypoints)[2]
    w, h = size
    out = {}
    for region, (kp, dx, dy, bw, bh) in _BOXES.items():
        cx, cy = keypoints[kp][0] + dx * iod, keypoints[kp][1] + dy * iod
        x0, y0 = max(0, round(cx - bw * iod / 2)), max(0, round(cy - bh * iod / 2))
        x1, y1 = min(w, round(cx + bw * iod / 2)), min(h, round(cy + bh * iod / 2))
        out[region] = (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))
    return out


def keypoints_at(
    keypoints: Keypoints | None, size: int, original: tuple[int, int]
) -> dict[str, tuple[float, float]]:
    """Keypoints of a picture of size ``original`` rescaled to a ``size`` x ``size`` copy
    (typical ones when the face stage found none)."""
    if not keypoints:
        return typical_keypoints((size, size))
    kx, ky = size / original[0], size / original[1]
    return {n: (x * kx, y * ky) for n, (x, y) in keypoints.items() if n in _KP_NAMES}


# The keypoints the region boxes are placed by.
_KP_NAMES = frozenset(kp for kp, *_ in _BOXES.values())


# Square crops for region-aware models: centred on the region box, side in IODs (a margin
# around the feature, so a pasted patch's blended border is inside the crop).
CROP_SIDE = {"left_eye": 0.9, "right_eye": 0.9, "nose": 1.0, "mouth": 1.2}


def region_crops(
    image: np.ndarray, keypoints: Keypoints, size: int, context: float = 1.0
) -> np.ndarray:
    """The four regions as square crops, uint8 (4, size, size, 3), from a uint8 H x W x 3
    picture at its own resolution (grey where a crop leaves the picture). ``context``
    scales the crops' sides (:data:`CROP_SIDE`)."""
    h, w = image.shape[:2]
    iod = eye_frame(keypoints)[2]
    boxes = region_boxes(keypoints, (w, h))
    pic = Image.fromarray(image)
    out = np.empty((len(REGIONS), size, size, 3), np.uint8)
    for k, region in enumerate(REGIONS):
        x0, y0, x1, y1 = boxes[region]
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, context * CROP_SIDE[region] * iod / 2
        box = (round(cx - half), round(cy - half), round(cx + half), round(cy + half))
        crop = crop_padded(pic, box)
        out[k] = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
    return out
