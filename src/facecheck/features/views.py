"""Views: which pictures or pooled cells of one scored picture a backbone pass is read
through (region crops, region-pooled patch tokens, every token)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image

from facecheck.image.regions import (
    CROP_SIDE,
    REGIONS,
    Keypoints,
    region_boxes,
    region_crops,
    typical_keypoints,
)


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
    (:class:`facecheck.heads.models.TokenMILHead`): the picture's features and the four regions
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
