"""Where the eyes, nose and mouth are: region boxes and crops from the face stage's keypoints.

The four regions are those of the rff fakes' file names, in their order: left eye, right eye,
nose, mouth, *as seen in the picture*. Boxes are placed from BlazeFace's keypoints and sized in
units of the inter-ocular distance (IOD), so they follow the face whatever its framing.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image

from .faces import crop_padded

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


class RegionView:
    """What a feature extractor embeds for region scores: the four region crops of a picture.

    The right eye's crop is mirrored, so both eyes look alike to a backbone (and one eye
    model can learn from both). Keypoints are those of the scored picture; without them the
    typical rff positions are used.
    """

    n = len(REGIONS)
    needs_keypoints = True

    def __init__(self, size: int = 224, context: float = 1.0):
        self.size = size
        self.context = context

    @property
    def key(self) -> str:
        sides = ",".join(f"{self.context * CROP_SIDE[r]:g}" for r in REGIONS)
        return f"regions{VIEW_VERSION}-{self.size}-{sides}"

    def __call__(self, picture: Image.Image, keypoints: Keypoints | None) -> list[Image.Image]:
        rgb = np.asarray(picture.convert("RGB"))
        kps = keypoints if keypoints else typical_keypoints(picture.size)
        crops = region_crops(rgb, kps, self.size, self.context)
        crops[REGIONS.index("right_eye")] = crops[REGIONS.index("right_eye"), :, ::-1]
        return [Image.fromarray(c) for c in crops]


def box_weights(
    boxes: Mapping[str, tuple[int, ...]], size: tuple[int, int], grid: tuple[int, int]
) -> np.ndarray:
    """How much of each cell of a ``grid`` (rows, cols) laid over a picture of ``size``
    (w, h) each region box covers, as pooling weights (4, rows, cols) summing to 1 per
    region (a box smaller than a cell still gets the cell it lies in)."""
    (w, h), (rows, cols) = size, grid
    ys, xs = np.linspace(0, h, rows + 1), np.linspace(0, w, cols + 1)
    out = np.zeros((len(REGIONS), rows, cols), np.float64)
    for k, region in enumerate(REGIONS):
        x0, y0, x1, y1 = boxes[region]
        over_x = np.clip(np.minimum(xs[1:], x1) - np.maximum(xs[:-1], x0), 0, None)
        over_y = np.clip(np.minimum(ys[1:], y1) - np.maximum(ys[:-1], y0), 0, None)
        out[k] = np.outer(over_y, over_x)
        if out[k].sum() <= 0:
            cy = min(rows - 1, int((y0 + y1) / 2 / h * rows))
            cx = min(cols - 1, int((x0 + x1) / 2 / w * cols))
            out[k, cy, cx] = 1.0
        out[k] /= out[k].sum()
    return out.astype(np.float32)


class PooledRegionView:
    """Region features from one pass over the whole face: the backbone's map (a CNN's last
    convolutional cells, a ViT's patch tokens) averaged inside each region box, weighted by
    how much of each cell the box covers. A quarter of :class:`RegionView`'s cost (one
    picture instead of four crops), at the map's coarser resolution. ``with_image`` puts the
    backbone's features of the picture first (one pass gives both)."""

    needs_keypoints = True
    pooled = True

    def __init__(self, with_image: bool = False):
        # with_image: the backbone's own features first (same pass), then the four regions:
        # the input of a region-aware image head.
        self.with_image = with_image
        self.n = len(REGIONS) + with_image

    @property
    def key(self) -> str:
        return f"pooled{VIEW_VERSION}" + ("+image" if self.with_image else "")

    def __call__(self, picture: Image.Image, keypoints: Keypoints | None) -> list[Image.Image]:
        return [picture]

    def weights(
        self, picture: Image.Image, keypoints: Keypoints | None, grid: tuple[int, int]
    ) -> np.ndarray:
        kps = keypoints if keypoints else typical_keypoints(picture.size)
        return box_weights(region_boxes(kps, picture.size), picture.size, grid)


class TokenView(PooledRegionView):
    """Everything one pass gives, for a head that reads every patch token
    (:class:`facecheck.models.TokenMILHead`): the picture's features and the four regions
    pooled (as ``PooledRegionView(with_image=True)``, so region scores still read them),
    then every cell of the map (cells x dim, row by row) and each region's box weights over
    the cells (4 x cells). Kept in float16: for CLIP at 224 px 155,152 numbers, 303 KB per
    image (float16 rounding moves a CLIP feature by ~1e-3 of its spread)."""

    tokens = True
    dtype = np.float16

    def __init__(self, grid: tuple[int, int]):
        super().__init__(with_image=True)
        self.grid = (int(grid[0]), int(grid[1]))
        self.cells = self.grid[0] * self.grid[1]

    @property
    def key(self) -> str:
        return f"tokens{VIEW_VERSION}-{self.grid[0]}x{self.grid[1]}"

    def width(self, dim: int) -> int:
        """Numbers per picture for a backbone of ``dim`` channels."""
        return dim * (self.n + self.cells) + len(REGIONS) * self.cells


def token_cells(width: int, dim: int) -> int:
    """How many map cells a :class:`TokenView` row of ``width`` numbers holds (``dim``
    channels); ValueError if no whole number does."""
    n = len(REGIONS) + 1
    cells, rest = divmod(width - n * dim, dim + len(REGIONS))
    if cells < 1 or rest:
        raise ValueError(f"{width} numbers are no token row of a {dim}-channel backbone")
    return cells


def region_view_kind(key: str) -> str:
    """``"pooled"`` or ``"crops"``: which view a bundle's ``regions.view`` key names."""
    return "pooled" if key.startswith(("pooled", "tokens")) else "crops"


# Bumped when region boxes or crops change, so cached region features are never reused.
VIEW_VERSION = 1
