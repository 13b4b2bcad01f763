"""The noise-residual stream (fixed SRM filters; no weights, no mocks)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from facecheck.backbones.noise import DIM, FILTERS, GRID, NoiseResiduals
from facecheck.backbones.registry import load_backbone
from facecheck.features.extract import FeatureExtractor

LEVELS, PER_FILTER = 5, 55


def _blocks(features: np.ndarray) -> np.ndarray:
    """(n, 220) -> (n, filters, 55): histogram (5), right (25), below (25) per filter."""
    return features.reshape(len(features), len(FILTERS), PER_FILTER)


def _picture(noise_inside: float, rng) -> np.ndarray:
    """A smooth gradient with mild noise, and stronger noise inside one box (a pasted
    patch from another camera)."""
    yy, xx = np.mgrid[0:256, 0:256]
    base = 60 + 0.3 * xx + 0.2 * yy + rng.normal(0, 1.0, (256, 256))
    base[32:96, 32:96] += rng.normal(0, noise_inside, (64, 64))
    return np.clip(np.repeat(base[..., None], 3, axis=2), 0, 255)


def test_histograms_and_co_occurrences_sum_to_one_and_a_flat_picture_is_all_zero_residual():
    model = NoiseResiduals()
    assert DIM == len(FILTERS) * PER_FILTER == 220
    flat = torch.full((1, 3, 64, 64), 128.0)
    blocks = _blocks(model(flat).numpy())
    centre = LEVELS // 2
    assert np.allclose(blocks[..., centre], 1)  # every residual is 0
    assert np.allclose(blocks[..., LEVELS + centre * LEVELS + centre], 1)  # (0, 0) pairs
    noisy = torch.from_numpy(_picture(8.0, np.random.default_rng(0))).permute(2, 0, 1)[None]
    b = _blocks(model(noisy.float()).numpy())
    assert np.allclose(b[..., :LEVELS].sum(-1), 1, atol=1e-5)
    assert np.allclose(b[..., LEVELS : LEVELS + 25].sum(-1), 1, atol=1e-5)
    assert np.allclose(b[..., LEVELS + 25 :].sum(-1), 1, atol=1e-5)


def test_the_map_finds_a_patch_with_other_noise():
    """Cells over the noisier patch have fewer zero residuals than cells elsewhere."""
    model = NoiseResiduals()
    x = torch.from_numpy(_picture(8.0, np.random.default_rng(1))).permute(2, 0, 1)[None]
    fmap = model.forward_features(x.float())[0].numpy()  # (220, 7, 7)
    assert fmap.shape == (DIM, GRID, GRID)
    zero_share = fmap.reshape(len(FILTERS), PER_FILTER, GRID, GRID)[:, LEVELS // 2].mean(0)
    inside = zero_share[1:3, 1:3].mean()  # the patch covers rows/cols 32..96 of 256
    outside = zero_share[4:, 4:].mean()
    assert inside < outside - 0.2
    # The features are the map's mean.
    assert np.allclose(model(x.float())[0].numpy(), fmap.mean(axis=(1, 2)), atol=1e-6)


def test_srm_is_a_backbone_that_loads_offline_and_extracts(face_paths, tmp_path):
    bb = load_backbone("srm")
    assert bb.dim == DIM and bb.preprocessing.size == 256
    assert bb.weights_id == load_backbone("srm").weights_id  # named by the filters' file
    F = FeatureExtractor(bb, None, progress=False).extract(face_paths[:3]).features
    assert F.shape == (3, DIM) and np.isfinite(F).all()
    # Re-saving a face as a strong JPEG changes its noise statistics.
    Image.open(face_paths[0]).convert("RGB").save(tmp_path / "q30.jpg", quality=30)
    G = FeatureExtractor(bb, None, progress=False).extract([tmp_path / "q30.jpg"]).features
    assert np.abs(G[0] - F[0]).sum() > 0.1
