"""Synthetic fakes for the families the data has none (or too few) of, made from real faces:
two-identity morphs, cross-identity face swaps and whole-face self-blends (SBI).

All three work on a face's dense landmarks (:func:`facecheck.image.landmarks.face_landmarks`)
and return the fake with its mask (where pixels came from elsewhere), so training can teach
*where* as well as *whether*. Every random choice comes from the ``rng`` passed in: the same
seed gives the same fake.

- :func:`morph`: the face-morphing attack on ID photos. Both faces are warped to their
  average shape (Delaunay triangles) and alpha-blended; the blended inner face is then
  spliced onto the first subject's photo, itself warped to that shape, and its seam
  smoothed, as morphing tools do.
- :func:`swap`: the second face, warped onto the first face's landmarks and colour-matched,
  pasted over it through the first face's oval (what face-swap videos do frame by frame).
- :func:`self_blend`: the face blended with a colour-, scale- and sharpness-jittered copy of
  itself through a jittered face-oval mask (Self-Blended Images, Shiohara & Yamasaki 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facecheck.image.landmarks import hull_mask, inter_ocular, warp, with_frame


@dataclass(frozen=True)
class SyntheticFake:
    image: np.ndarray  # uint8 H x W x 3
    mask: np.ndarray  # float32 H x W in [0, 1]: how much of each pixel came from elsewhere
    landmarks: np.ndarray  # (468, 2): where the fake's face landmarks are by construction
    kind: str  # "morph", "swap" or "self_blend"
    alpha: float = 1.0  # morph: the second face's weight; swap/self_blend: blend strength


def _check(image: np.ndarray, points: np.ndarray) -> tuple[int, int]:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"faces must be uint8 H x W x 3, got {image.dtype} {image.shape}")
    if points.shape != (468, 2):
        raise ValueError(f"landmarks must be (468, 2), got {points.shape}")
    return image.shape[1], image.shape[0]


def _match_colour(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``source``'s colours shifted to ``target``'s statistics inside ``mask``."""
    inside = mask > 0.5
    if inside.sum() < 16:
        return source
    out = source.copy()
    for c in range(3):
        s, t = source[..., c][inside], target[..., c][inside]
        out[..., c] = (source[..., c] - s.mean()) * ((t.std() + 1e-3) / (s.std() + 1e-3)) + t.mean()
    return np.clip(out, 0, 255)


def _compose(base: np.ndarray, face: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None]
    return np.clip(np.rint(base * (1 - m) + face * m), 0, 255).astype(np.uint8)


def morph(
    a: np.ndarray,
    points_a: np.ndarray,
    b: np.ndarray,
    points_b: np.ndarray,
    rng: np.random.Generator,
    alpha: float | None = None,
) -> SyntheticFake:
    """A morph of faces ``a`` and ``b`` (same size), ``alpha`` the weight of ``b`` (drawn
    in [0.4, 0.6] when None), spliced onto ``a``'s photo."""
    size = _check(a, points_a)
    if _check(b, points_b) != size:
        raise ValueError("both faces must have the same size")
    alpha = float(rng.uniform(0.4, 0.6)) if alpha is None else float(alpha)
    mean = (1 - alpha) * points_a + alpha * points_b
    src_a, src_b, dst = (with_frame(p, size) for p in (points_a, points_b, mean))
    wa, wb = warp(a, src_a, dst, size), warp(b, src_b, dst, size)
    blended = (1 - alpha) * wa + alpha * wb
    feather = inter_ocular(mean) * float(rng.uniform(0.08, 0.2))
    mask = hull_mask(mean, size, feather)
    # The splice: a's photo (already on the mean shape) around the blended inner face.
    face = _match_colour(blended, wa, mask)
    image = _compose(wa, face, mask)
    return SyntheticFake(image, mask, mean, "morph", alpha)


def swap(
    target: np.ndarray,
    points_t: np.ndarray,
    donor: np.ndarray,
    points_d: np.ndarray,
    rng: np.random.Generator,
) -> SyntheticFake:
    """``donor``'s face on ``target``'s head: warped onto ``target``'s landmarks, its colours
    matched, pasted through ``target``'s face oval with a feathered edge."""
    size = _check(target, points_t)
    _check(donor, points_d)
    moved = warp(
        donor,
        with_frame(points_d, (donor.shape[1], donor.shape[0])),
        with_frame(points_t, size),
        size,
    )
    feather = inter_ocular(points_t) * float(rng.uniform(0.08, 0.2))
    mask = hull_mask(points_t, size, feather)
    face = _match_colour(moved, target.astype(np.float32), mask)
    strength = float(rng.uniform(0.85, 1.0))
    return SyntheticFake(
        _compose(target.astype(np.float32), face, mask * strength),
        mask * strength,
        points_t,
        "swap",
        strength,
    )


def self_blend(face: np.ndarray, points: np.ndarray, rng: np.random.Generator) -> SyntheticFake:
    """SBI: the face blended with a jittered copy of itself through a jittered oval mask."""
    size = _check(face, points)
    w, h = size
    img = face.astype(np.float32)
    # The source: colour (gain, bias), scale about the face's centre, blur or sharpen.
    cx, cy = points.mean(axis=0)
    s = float(rng.uniform(0.95, 1.05))
    shift = rng.uniform(-0.02, 0.02, size=2) * inter_ocular(points)
    m = np.float32([[s, 0, (1 - s) * cx + shift[0]], [0, s, (1 - s) * cy + shift[1]]])
    source = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.5:
        source = cv2.GaussianBlur(source, (0, 0), float(rng.uniform(0.4, 1.2)))
    else:
        blur = cv2.GaussianBlur(source, (0, 0), 1.5)
        source = source + float(rng.uniform(0.3, 1.0)) * (source - blur)
    source = source * rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    source = source + rng.uniform(-10, 10, size=3).astype(np.float32)
    # The mask: the face oval, its points moved a little, eroded or grown, feathered.
    wobble = points + rng.normal(0, 0.03 * inter_ocular(points), size=points.shape)
    feather = inter_ocular(points) * float(rng.uniform(0.05, 0.2))
    strength = float(rng.choice([0.25, 0.5, 0.75, 1.0, 1.0, 1.0]))
    mask = hull_mask(wobble, size, feather) * strength
    return SyntheticFake(
        _compose(img, np.clip(source, 0, 255), mask), mask, points, "self_blend", strength
    )
