"""Fine-tuning: a one-epoch run of a tiny real network on real images, checkpoints, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facecheck.backbones.networks import NETWORKS, build_network, count_parameters
from facecheck.evaluation.data import load_dataset
from facecheck.image.decode import ImageError
from facecheck.training import augment
from facecheck.training.finetune import FineTuner, TrainConfig


@pytest.fixture(scope="module")
def rff_small(small_manifest):
    """rff reals and fakes from the small subset: 20 + 20, split 28 train / 12 val."""
    ds = load_dataset(small_manifest).where(source="rff")
    recs = sorted(ds.records, key=lambda r: r.path.name)
    train = [r for i, r in enumerate(recs) if i % 10 not in (0, 5, 7)]
    val = [r for i, r in enumerate(recs) if i % 10 in (0, 5, 7)]
    return ds.subset(train), ds.subset(val)


def _config(**kw) -> TrainConfig:
    base = dict(network="baseline_cnn", epochs=1, batch_size=8, augment="flip,jpeg:70-90")
    return TrainConfig(**{**base, **kw})


def test_one_epoch_fine_tune_saves_and_loads_identically(rff_small, tmp_path):
    train, val = rff_small
    ft = FineTuner(_config(), device="cpu").fit(
        train.paths, train.y, val.paths, val.y, checkpoint_dir=tmp_path / "ckpt", progress=False
    )
    assert len(ft.history) == 1
    row = ft.history[0]
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])
    assert 0 <= row["val_roc_auc"] <= 1
    assert (tmp_path / "ckpt" / "last.pt").is_file() and (tmp_path / "ckpt" / "best.pt").is_file()
    p = ft.predict_proba(val.paths)
    assert p.shape == (len(val), 2) and np.allclose(p.sum(1), 1)
    path = ft.save(tmp_path / "model.pt")
    again = FineTuner.load(path, device="cpu")
    assert np.array_equal(again.predict_proba(val.paths), p)
    assert again.config == ft.config and str(again.history) == str(ft.history)  # NaN-safe


def test_resume_continues_from_the_last_epoch(rff_small, tmp_path):
    train, val = rff_small
    kw = dict(checkpoint_dir=tmp_path / "ckpt", progress=False)
    FineTuner(_config(epochs=1, patience=10), device="cpu").fit(
        train.paths, train.y, val.paths, val.y, **kw
    )
    resumed = FineTuner(_config(epochs=2, patience=10), device="cpu").fit(
        train.paths, train.y, val.paths, val.y, resume=True, **kw
    )
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    straight = FineTuner(_config(epochs=2, patience=10), device="cpu").fit(
        train.paths, train.y, val.paths, val.y, progress=False
    )
    # Same seed, same batches and augmentation draws: resuming changes nothing.
    assert resumed.history[1]["train_loss"] == pytest.approx(straight.history[1]["train_loss"])


def _region_crops(ds) -> np.ndarray:
    """(N, 4, 3, 112, 112) region crops at the rff crops' typical keypoints."""
    from facecheck.image.decode import load_image
    from facecheck.image.regions import region_crops, typical_keypoints

    out = []
    for r in ds:
        img = np.asarray(load_image(r.path).image)
        kps = typical_keypoints((img.shape[1], img.shape[0]))
        out.append(region_crops(img, kps, 112).transpose(0, 3, 1, 2))
    return np.stack(out)


def test_region_targets_are_an_auxiliary_loss_of_the_region_logits(rff_small):
    from facecheck.evaluation.data import region_targets
    from facecheck.training.finetune import region_loss

    # The loss reads the known targets only, and unknown ones pass no gradient.
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]], requires_grad=True)
    targets = torch.tensor([[1.0, float("nan")], [0.0, float("nan")]])
    region_loss(logits, targets).backward()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits.detach()[:, 0], targets[:, 0]
    )
    assert region_loss(logits.detach(), targets) == pytest.approx(float(expected))
    assert logits.grad[:, 1].abs().sum() == 0 and logits.grad[:, 0].abs().sum() > 0
    assert float(region_loss(logits.detach(), torch.full((2, 2), float("nan")))) == 0.0

    train, val = rff_small
    X, Xv = _region_crops(train), _region_crops(val)
    Y, known = region_targets(list(train))
    regions = np.where(known[:, None], Y, np.nan)
    cfg = _config(network="region_lite0", augment="none", batch_size=8)
    runs = {
        w: FineTuner(cfg, device="cpu", region_weight=w).fit(
            X, train.y, Xv, val.y, progress=False, regions=regions
        )
        for w in (0.0, 1.0)
    }
    with_aux, without = runs[1.0], runs[0.0]
    assert np.isfinite(with_aux.history[0]["train_region_loss"])
    assert "train_region_loss" not in without.history[0]
    # The same seed and batches: only the auxiliary loss makes the weights differ.
    a, b = with_aux.net.state_dict(), without.net.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    with pytest.raises(ValueError, match="keeps the rows"):
        FineTuner(cfg, device="cpu", region_weight=1.0, imbalance="under").fit(
            X, train.y, Xv, val.y, progress=False, regions=regions
        )
    with pytest.raises(ValueError, match="region crops"):
        FineTuner(_config(), device="cpu", region_weight=1.0).fit(
            train.paths, train.y, val.paths, val.y, progress=False, regions=regions
        )


def test_smote_on_pixels_and_undersampling_change_the_training_counts(rff_small):
    train, val = rff_small
    y = train.y.copy()
    keep = np.r_[np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:4]]  # 14 reals, 4 fakes
    paths = [train.paths[i] for i in keep]
    ft = FineTuner(_config(imbalance="smote0.5+under1", augment="none"), device="cpu")
    ft.fit(paths, y[keep], val.paths, val.y, progress=False)
    assert ft.train_counts_ == {"real": 7, "fake": 7}  # SMOTE to 7 fakes, then 7 reals kept


def test_bad_training_image_is_a_clear_error(rff_small, tmp_path):
    train, val = rff_small
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="could not be read"):
        FineTuner(_config(), device="cpu").fit(
            [*train.paths, bad], [*train.y, 1], val.paths, val.y, progress=False
        )


def test_networks_build_offline_with_one_logit():
    for name in ("baseline_cnn", "convnext_atto", "efficientnet_lite0"):
        net = build_network(name).eval()
        s = NETWORKS[name].preprocessing.size
        with torch.no_grad():
            assert net(torch.zeros(2, 3, s, s)).shape == (2,)
    # Lite0 starts from its shipped ImageNet weights, the others from scratch.
    a, b = build_network("efficientnet_lite0"), build_network("efficientnet_lite0")
    assert torch.equal(a.net._conv_stem.weight, b.net._conv_stem.weight)
    assert count_parameters(build_network("baseline_cnn")) < 300_000


def test_augmentation_pipeline_parses_and_keeps_shape():
    torch.manual_seed(0)
    pipe = augment.build("flip,rotate:10,jitter:0.2,crop:0.8,jpeg:50-90", 64)
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    out = augment.apply(pipe, x)
    assert out.shape == x.shape and out.dtype == torch.uint8 and not torch.equal(out, x)
    assert augment.build("none", 64) is None
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.build("mixup", 64)


def test_a_short_training_run_improves_validation_auc_over_its_first_epoch(small_manifest):
    """Issue 9's check that the loop learns: GAN faces against real photos (20 of each of
    two sources per class), the small baseline CNN, four epochs on the CPU."""
    ds = load_dataset(small_manifest)
    recs = sorted((r for r in ds if r.source != "rff" or r.y == 0), key=lambda r: r.path.name)
    train = ds.subset([r for i, r in enumerate(recs) if i % 10 >= 3])
    val = ds.subset([r for i, r in enumerate(recs) if i % 10 < 3])
    assert set(val.y) == {0, 1}
    ft = FineTuner(_config(epochs=4, patience=10, augment="none"), device="cpu").fit(
        train.paths, train.y, val.paths, val.y, progress=False
    )
    aucs = [row["val_roc_auc"] for row in ft.history]
    assert len(aucs) == 4
    assert aucs[-1] > aucs[0] + 0.05, aucs
