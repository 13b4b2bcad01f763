"""Synthetic fakes from real faces (issue 26): morphs, face swaps and whole-face self-blends
keep the picture's size and mode, put the landmarks where they say, record their mask and
are seeded."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facecheck.image.landmarks import face_landmarks, inter_ocular
from facecheck.training.synthetic import morph, self_blend, swap

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def faces(shared_data):
    """Two real faces of one source with their landmarks."""
    out = []
    for name in ("real_00001.jpg", "real_00003.jpg"):
        px = np.asarray(Image.open(shared_data / "rff" / "real" / name).convert("RGB"))
        points = face_landmarks(px)
        assert points is not None and points.shape == (468, 2)
        out.append((px, points))
    return out


def _make(kind: str, faces, seed: int):
    (a, la), (b, lb) = faces
    rng = np.random.default_rng(seed)
    if kind == "morph":
        return morph(a, la, b, lb, rng)
    if kind == "swap":
        return swap(a, la, b, lb, rng)
    return self_blend(a, la, rng)


@pytest.mark.parametrize("kind", ["morph", "swap", "self_blend"])
def test_generators_keep_the_picture_record_the_mask_and_are_seeded(faces, kind):
    (a, _), _ = faces
    fake = _make(kind, faces, 0)
    assert fake.image.shape == a.shape and fake.image.dtype == np.uint8 and fake.kind == kind
    assert fake.mask.shape == a.shape[:2] and fake.mask.dtype == np.float32
    assert fake.mask.min() >= 0.0 and fake.mask.max() <= 1.0 and fake.mask.max() > 0.2
    assert np.array_equal(_make(kind, faces, 0).image, fake.image)
    assert not np.array_equal(_make(kind, faces, 1).image, fake.image)
    # The face is really another one where the mask says so.
    inside = fake.mask > 0.5
    assert np.abs(fake.image[inside].astype(int) - a[inside].astype(int)).mean() > 3
    if kind != "morph":  # outside the mask the target is untouched (a morph warps all of it)
        assert np.array_equal(fake.image[fake.mask == 0], a[fake.mask == 0])
    # The fake's face is where its landmarks say (a face mesh finds it there again).
    found = face_landmarks(fake.image)
    assert found is not None
    assert np.abs(found - fake.landmarks).mean() < 0.05 * inter_ocular(fake.landmarks)


def test_a_morph_sits_between_both_identities(faces):
    (a, la), (b, lb) = faces
    fake = morph(a, la, b, lb, np.random.default_rng(0), alpha=0.5)
    iod = inter_ocular(fake.landmarks)
    assert np.allclose(fake.landmarks, (la + lb) / 2)
    found = face_landmarks(fake.image)
    # Nearer the average shape than either face's own.
    to_mean = np.abs(found - fake.landmarks).mean() / iod
    assert to_mean < np.abs(found - la).mean() / iod and to_mean < np.abs(found - lb).mean() / iod
    with pytest.raises(ValueError, match="same size"):
        morph(a, la, b[:200], lb, np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        swap(a.astype(np.float32), la, b, lb, np.random.default_rng(0))
