"""The shipped detector in the field (issue 26): GAN faces and Photoshop edits from its own
held-out test split, re-saved at JPEG q70 and then placed in a larger photo (which the face
stage must find again), should still be flagged at the shipped threshold, and real photos
treated the same way should not (where the shipped bundle falls short: strict xfail).
Images are a seeded draw, not picked; the bounds allow one miss per class, since recall and
FPR are rates, not guarantees per image."""

from __future__ import annotations

import numpy as np
import pytest

from facecheck.evaluation.data import draw, load_dataset
from facecheck.evaluation.protocols import build
from facecheck.image.perturb import perturb

pytestmark = pytest.mark.slow
N = 8  # images per class and source


@pytest.fixture(scope="module")
def held_out(shipped_detector, shared_data):
    training = shipped_detector.metadata["training"]
    split = build(training["protocol"], load_dataset(shared_data), training["seed"]).split
    test = [r for r in split.test if not r.parents]
    pick = {
        key: draw([r for r in test if (r.source, r.label) == key], N, seed=0)
        for key in (("tpdne", "fake"), ("rff", "fake"), ("rff", "real"), ("utkface", "real"))
    }
    return pick


def _processed(record) -> bytes:
    return perturb(perturb(record.path, "jpeg70"), "in_photo")


def _flagged(det, records) -> np.ndarray:
    return det.predict_proba([_processed(r) for r in records])[:, 1] >= det.threshold


_NOT_YET = pytest.mark.xfail(
    strict=True,
    reason="issue 26, not reached yet by the shipped detector (benchmarks/p8_recipes.md: "
    "recall and FPR after the chains); strict, so a detector that reaches it turns this "
    "into a failure that asks for the mark to go",
)


# The round-2 bundle (trained with processed copies, its threshold held on processed
# reals) keeps UTKFace's processed reals unflagged, which round 1's did not, but misses
# GAN faces placed in a larger photo that round 1's caught (in_photo recall 47% against
# 73%: benchmarks/p8_recipes.md): a regression recorded here, not hidden.
_LOST = pytest.mark.xfail(
    strict=True,
    reason="issue 26: the round-2 bundle misses most GAN faces inside a larger photo "
    "(benchmarks/p8_recipes.md, in_photo); strict, so a bundle that catches them again "
    "turns this into a failure that asks for the mark to go",
)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(("tpdne", "fake"), marks=_LOST),
        ("rff", "real"),
        pytest.param(("rff", "fake"), marks=_NOT_YET),
        ("utkface", "real"),
    ],
    ids=lambda k: "/".join(k),
)
def test_processed_faces_keep_their_verdict(shipped_detector, held_out, key):
    """At most one of the N processed images of a class changes its verdict."""
    flagged = _flagged(shipped_detector, held_out[key])
    wrong = (~flagged).sum() if key[1] == "fake" else flagged.sum()
    assert wrong <= 1, f"{wrong} of {N} {key} processed images got the wrong verdict"
