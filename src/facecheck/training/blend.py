"""Self-blended training fakes: Photoshop-like edits made from real faces, with their masks.

The rff fakes were made by pasting an eye, the nose or the mouth of another face and blending
it in. :class:`SelfBlender` does the same to any real face, as often as training wants
(the idea behind Face X-ray and Self-Blended Images): it places the four regions by the face
stage's keypoints (:func:`region_boxes`), takes each chosen region from a donor (another real
face, scaled and moved so the regions coincide) or from a colour-, scale- and
sharpness-jittered copy of the same face, and pastes it through a feathered elliptical mask.
It returns the fake, the mask (the only place pixels changed) and the region bits, in the
file-name order of the rff fakes: left eye, right eye, nose, mouth (as seen in the picture).

:class:`SyntheticFakes` draws the targets from two real sources in equal shares, so that the
source of a picture never predicts its label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from facecheck.image.regions import REGIONS, Keypoints, eye_frame, region_boxes


@dataclass(frozen=True)
class BlendResult:
    image: np.ndarray  # uint8 H x W x 3, the fake
    mask: np.ndarray  # float32 H x W in [0, 1]: how much of each pixel was replaced
    regions: tuple[int, int, int, int]  # left eye, right eye, nose, mouth replaced (1) or not
    donor: str  # "other" (another face) or "self" (a jittered copy)


class SelfBlender:
    """Makes one Photoshop-like fake from a real face and (optionally) a donor face.

    ``p_other``: chance of taking the regions from the donor rather than from a jittered copy
    of the target. ``feather``: blur radius of the mask edge, as a fraction of the IOD.
    """

    def __init__(self, p_other: float = 0.5, feather: tuple[float, float] = (0.04, 0.12)):
        self.p_other = p_other
        self.feather = feather

    def blend(
        self,
        target: np.ndarray,
        keypoints: Keypoints,
        rng: np.random.Generator,
        donor: np.ndarray | None = None,
        donor_keypoints: Keypoints | None = None,
        regions: Sequence[str] | None = None,
    ) -> BlendResult:
        if target.dtype != np.uint8 or target.ndim != 3 or target.shape[2] != 3:
            raise ValueError(f"target must be uint8 H x W x 3, got {target.dtype} {target.shape}")
        h, w = target.shape[:2]
        if regions is None:  # a non-empty subset, uniformly over the 15 (as rff's bits vary)
            code = int(rng.integers(1, 16))
            regions = [r for i, r in enumerate(REGIONS) if code >> (3 - i) & 1]
        use_other = (
            donor is not None and donor_keypoints is not None and rng.random() < self.p_other
        )
        boxes = region_boxes(keypoints, (w, h))
        iod = eye_frame(keypoints)[2]
        mask_img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask_img)
        for r in regions:
            x0, y0, x1, y1 = boxes[r]
            # A slightly random ellipse inside the box: edits never have the same outline.
            jx, jy = (x1 - x0) * 0.1, (y1 - y0) * 0.1
            draw.ellipse(
                (
                    x0 + rng.uniform(0, jx),
                    y0 + rng.uniform(0, jy),
                    x1 - rng.uniform(0, jx),
                    y1 - rng.uniform(0, jy),
                ),
                fill=255,
            )
        radius = float(rng.uniform(*self.feather)) * iod
        mask = np.asarray(mask_img.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0
        if use_other:
            source = _align_donor(donor, donor_keypoints, keypoints, (w, h))  # type: ignore[arg-type]
            source = _match_colour(source, target, mask)
        else:
            source = _jitter(target, keypoints, rng)
        m = mask[..., None]
        fake = np.clip(np.rint(target * (1.0 - m) + source * m), 0, 255).astype(np.uint8)
        # Where the mask is 0 the picture is untouched, bit for bit.
        fake[mask == 0] = target[mask == 0]
        bits = tuple(int(r in regions) for r in REGIONS)
        return BlendResult(fake, mask, bits, "other" if use_other else "self")  # type: ignore[arg-type]


def _align_donor(
    donor: np.ndarray, donor_kp: Keypoints, target_kp: Keypoints, size: tuple[int, int]
) -> np.ndarray:
    """The donor moved and scaled so its eyes' midpoint and IOD match the target's."""
    tx, ty, tiod = eye_frame(target_kp)
    dx, dy, diod = eye_frame(donor_kp)
    s = diod / tiod  # donor pixels per target pixel
    # PIL's affine maps each output pixel (x, y) to the input pixel (a x + b y + c, d x + e y + f).
    coeffs = (s, 0.0, dx - s * tx, 0.0, s, dy - s * ty)
    img = Image.fromarray(donor).transform(
        size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR
    )
    return np.asarray(img, np.float32)


def _match_colour(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift the donor's colours to the target's inside the mask (what a retoucher does)."""
    inside = mask > 0.5
    if inside.sum() < 4:
        return source
    t = target.astype(np.float32)
    out = source.copy()
    for c in range(3):
        s_mu, s_sd = source[..., c][inside].mean(), source[..., c][inside].std() + 1e-3
        t_mu, t_sd = t[..., c][inside].mean(), t[..., c][inside].std() + 1e-3
        out[..., c] = (source[..., c] - s_mu) * (t_sd / s_sd) + t_mu
    return np.clip(out, 0, 255)


def _jitter(target: np.ndarray, keypoints: Keypoints, rng: np.random.Generator) -> np.ndarray:
    """A copy of the face with other colours, a slightly other scale and sharpness."""
    img = Image.fromarray(target)
    w, h = img.size
    s = float(rng.uniform(0.94, 1.06))
    cx, cy, _ = eye_frame(keypoints)
    img = img.transform(
        (w, h),
        Image.Transform.AFFINE,
        (s, 0.0, cx - s * cx, 0.0, s, cy - s * cy),
        resample=Image.Resampling.BILINEAR,
    )
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    else:
        img = img.filter(ImageFilter.UnsharpMask(radius=2, percent=int(rng.integers(40, 120))))
    arr = np.asarray(img, np.float32)
    gain = rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    bias = rng.uniform(-8, 8, size=3).astype(np.float32)
    return np.clip(arr * gain + bias, 0, 255)


class SyntheticFakes:
    """Draws self-blended fakes from real faces of several sources, in equal shares.

    ``pools``: source name -> (pictures uint8 N x H x W x 3, keypoints per picture). Donors
    come from the same source as the target (a retoucher pastes from a similar photo).
    """

    def __init__(
        self,
        pools: Mapping[str, tuple[np.ndarray, Sequence[Keypoints]]],
        blender: SelfBlender | None = None,
    ):
        if not pools or any(len(px) == 0 for px, _ in pools.values()):
            raise ValueError("every pool needs at least one real picture")
        self.pools = dict(pools)
        self.blender = blender or SelfBlender()

    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n fakes, uint8 (n, H, W, 3): the form ``FineTuner.fit(synthetic=...)`` takes."""
        return self.draw(n, rng)[0]

    def draw(
        self, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, list[str], np.ndarray, list[Keypoints]]:
        """n fakes (uint8 N x H x W x 3), the source of each, their region bits (N x 4) and
        the keypoints of each (its target's)."""
        names = sorted(self.pools)
        # Equal shares: source k gets every len(names)-th draw, from a shuffled start.
        start = int(rng.integers(len(names)))
        sources = [names[(start + i) % len(names)] for i in range(n)]
        out, bits, kps_out = [], [], []
        for src in sources:
            px, kps = self.pools[src]
            i, j = (int(v) for v in rng.choice(len(px), size=2, replace=len(px) < 2))
            res = self.blender.blend(px[i], kps[i], rng, donor=px[j], donor_keypoints=kps[j])
            out.append(res.image)
            bits.append(res.regions)
            kps_out.append(kps[i])
        return np.stack(out), sources, np.asarray(bits, np.int64), kps_out
