"""Self-blended fakes on real faces: masks, sizes, region placement, equal source shares."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facecheck.image.faces import FaceStage
from facecheck.image.regions import REGIONS, keypoints_at, region_boxes, typical_keypoints
from facecheck.training.blend import SelfBlender, SyntheticFakes

SIZE = 224


@pytest.fixture(scope="module")
def faces(shared_data):
    """Four rff reals and four UTKFace reals at 224 px, with their face-stage keypoints."""
    stage = FaceStage()
    out = {}
    for source, folder in (("rff", "rff/real"), ("utkface", "utkface/real")):
        px, kps = [], []
        for path in sorted((shared_data / folder).glob("*.jpg"))[:4]:
            img = Image.open(path).convert("RGB")
            a = stage.analyse(img)
            kps.append(keypoints_at(a.face.keypoints if a.face else None, SIZE, img.size))
            px.append(np.asarray(img.resize((SIZE, SIZE))))
        out[source] = (np.stack(px), kps)
    return out


def test_changed_pixels_lie_inside_the_mask_for_each_region(faces):
    px, kps = faces["rff"]
    blender = SelfBlender()
    rng = np.random.default_rng(0)
    for region in REGIONS:
        for donor in (None, 1):  # a jittered copy of the same face, and another face
            res = blender.blend(
                px[0],
                kps[0],
                rng,
                donor=None if donor is None else px[donor],
                donor_keypoints=None if donor is None else kps[donor],
                regions=[region],
            )
            changed = (res.image != px[0]).any(axis=2)
            assert changed.any(), region  # something was pasted
            assert (res.mask[changed] > 0).all(), region  # and only inside the mask
            assert res.regions == tuple(int(r == region) for r in REGIONS)
            # The mask sits on that region's box (its centre of mass inside the box).
            x0, y0, x1, y1 = region_boxes(kps[0], (SIZE, SIZE))[region]
            ys, xs = np.nonzero(res.mask > 0.5)
            assert x0 <= xs.mean() <= x1 and y0 <= ys.mean() <= y1, region


def test_blends_keep_size_and_mode(faces):
    px, kps = faces["utkface"]
    rng = np.random.default_rng(1)
    res = SelfBlender(p_other=1.0).blend(px[0], kps[0], rng, donor=px[2], donor_keypoints=kps[2])
    assert res.image.shape == px[0].shape and res.image.dtype == np.uint8
    assert res.mask.shape == px[0].shape[:2] and 0 <= res.mask.min() <= res.mask.max() <= 1
    assert res.donor == "other" and sum(res.regions) >= 1
    with pytest.raises(ValueError, match="uint8"):
        SelfBlender().blend(px[0].astype(np.float32), kps[0], rng)


def test_region_boxes_land_on_the_landmarks_of_a_real_face(faces):
    _, kps = faces["rff"]
    for kp in kps:
        boxes = region_boxes(kp, (SIZE, SIZE))
        for region, name in zip(REGIONS, ("left_eye", "right_eye", "nose", "mouth"), strict=True):
            x0, y0, x1, y1 = boxes[region]
            x, y = kp[name]
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
            assert x0 <= x <= x1 and y0 <= y <= y1, region
        # The eyes' boxes are side by side, above the mouth's.
        assert boxes["left_eye"][2] <= boxes["right_eye"][0] + 2
        assert max(boxes["left_eye"][3], boxes["right_eye"][3]) <= boxes["mouth"][1]
    typical = region_boxes(typical_keypoints((SIZE, SIZE)), (SIZE, SIZE))
    assert typical["left_eye"][0] < typical["right_eye"][0]


def test_synthetic_fakes_come_from_both_sources_in_equal_shares(faces):
    synth = SyntheticFakes(faces)
    for n, seed in ((10, 0), (64, 1), (7, 2)):
        imgs, sources, bits, kps = synth.draw(n, np.random.default_rng(seed))
        assert len(kps) == n
        assert imgs.shape == (n, SIZE, SIZE, 3) and bits.shape == (n, 4)
        counts = [sources.count(s) for s in ("rff", "utkface")]
        assert abs(counts[0] - counts[1]) <= n % 2, counts
        assert (bits.sum(axis=1) >= 1).all()
    # The FineTuner hook: n fakes as uint8 pictures, the same for the same seed.
    a, b = synth(6, np.random.default_rng(5)), synth(6, np.random.default_rng(5))
    assert a.dtype == np.uint8 and np.array_equal(a, b)
    with pytest.raises(ValueError, match="at least one"):
        SyntheticFakes({"rff": (np.zeros((0, SIZE, SIZE, 3), np.uint8), [])})


def test_finetuner_trains_on_synthetic_fakes_repeatably(faces):
    """Reals only + self-blended fakes each epoch: both classes are seen, runs repeat."""
    from facecheck.training.finetune import FineTuner

    px = np.concatenate([faces["rff"][0], faces["utkface"][0]])
    small = np.stack([np.asarray(Image.fromarray(p).resize((128, 128))) for p in px])
    kps = [
        {k: (x * 128 / SIZE, y * 128 / SIZE) for k, (x, y) in kp.items()}
        for kp in faces["rff"][1] + faces["utkface"][1]
    ]
    synth = SyntheticFakes({"rff": (small[:4], kps[:4]), "utkface": (small[4:], kps[4:])})
    fake_val = synth(4, np.random.default_rng(99))
    X_val = np.concatenate([small, fake_val]).transpose(0, 3, 1, 2)
    y_val = np.array([0] * 8 + [1] * 4)

    def run():
        ft = FineTuner(network="baseline_cnn", epochs=2, batch_size=8, seed=0, device="cpu")
        ft.fit(
            small.transpose(0, 3, 1, 2),
            np.zeros(8, np.int64),
            X_val,
            y_val,
            progress=False,
            synthetic=synth,
            n_synthetic=8,
        )
        return ft.history

    first, second = run(), run()
    assert len(first) == 2 and all(np.isfinite(r["train_loss"]) for r in first)
    assert [r["train_loss"] for r in first] == [r["train_loss"] for r in second]
