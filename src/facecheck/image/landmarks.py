"""Dense face landmarks (MediaPipe Face Mesh, 468 points, weights inside the wheel) and the
piecewise-affine warp that moves a face from one set of landmarks onto another.

The face stage's six BlazeFace keypoints place boxes; morphs and face swaps need the face's
whole shape, which is what these are for (``facecheck.training.synthetic``).
"""

from __future__ import annotations

import threading
from functools import cache

import cv2
import numpy as np
from scipy.spatial import Delaunay

# Face Mesh's outline of the face (its FACE_OVAL connections, in order round the face).
FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip
# The outer corners of the eyes (left and right as seen in the picture): the face's scale.
EYE_CORNERS = (33, 263)

_lock = threading.Lock()


@cache
def _mesh():
    import mediapipe as mp

    return mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, max_num_faces=2, refine_landmarks=False
    )


def face_landmarks(image: np.ndarray) -> np.ndarray | None:
    """The 468 landmarks (x, y in pixels) of the one face in ``image`` (uint8 H x W x 3),
    or None where there is no face or more than one."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 H x W x 3, got {image.dtype} {image.shape}")
    with _lock:  # the graph is not re-entrant
        found = _mesh().process(np.ascontiguousarray(image))
    faces = found.multi_face_landmarks or []
    if len(faces) != 1:
        return None
    h, w = image.shape[:2]
    return np.array([(p.x * w, p.y * h) for p in faces[0].landmark], np.float64)


def inter_ocular(points: np.ndarray) -> float:
    """Distance between the outer eye corners: the unit the generators size things in."""
    a, b = points[list(EYE_CORNERS)]
    return float(np.hypot(*(a - b)))


def with_frame(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``points`` plus the picture's corners and edge midpoints, so a warp covers all of it."""
    w, h = size
    frame = [
        (x, y) for x in (0, w / 2, w - 1) for y in (0, h / 2, h - 1) if (x, y) != (w / 2, h / 2)
    ]
    return np.vstack([points, np.array(frame, np.float64)])


def warp(image: np.ndarray, src: np.ndarray, dst: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` warped so that its points ``src`` land on ``dst`` (piecewise affine over the
    Delaunay triangles of ``dst``), into a picture of ``size`` (w, h)."""
    w, h = size
    out = np.zeros((h, w, 3), np.float32)
    source = image.astype(np.float32)
    for tri in Delaunay(dst).simplices:
        d, s = dst[tri].astype(np.float32), src[tri].astype(np.float32)
        x0, y0 = np.floor(d.min(0)).astype(int)
        x1, y1 = np.ceil(d.max(0)).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 <= x0 or y1 <= y0:
            continue
        m = cv2.getAffineTransform(s, d - np.float32([x0, y0]))
        patch = cv2.warpAffine(
            source, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        inside = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillConvexPoly(inside, np.round(d - [x0, y0]).astype(np.int32), 1)
        region = out[y0:y1, x0:x1]
        region[inside > 0] = patch[inside > 0]
    return out


def hull_mask(points: np.ndarray, size: tuple[int, int], feather: float) -> np.ndarray:
    """A float32 mask (h, w): 1 inside the face oval of ``points``, 0 outside, its edge
    blurred over ``feather`` pixels."""
    w, h = size
    mask = np.zeros((h, w), np.float32)
    oval = np.round(points[list(FACE_OVAL)]).astype(np.int32)
    cv2.fillConvexPoly(mask, cv2.convexHull(oval), 1.0)
    if feather > 0:  # shrink first, so the soft edge lies on the face, not beyond it
        r = max(1, round(feather / 2))
        mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
        k = int(2 * round(feather) + 1)
        mask = cv2.GaussianBlur(mask, (k, k), feather / 2)
    return np.clip(mask, 0.0, 1.0)
