"""Batched, cached feature extraction through the one preprocessing path (decode -> face
stage -> view -> backbone)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from facecheck.backbones.cpu import resolve_precision
from facecheck.backbones.registry import Backbone
from facecheck.features.cache import FeatureCache, default_cache_dir
from facecheck.image.decode import DecodedImage, ImageError, content_hash, decode, read_bytes
from facecheck.image.faces import FaceAnalysis, FaceError, FaceStage, scored_keypoints
from facecheck.image.regions import Keypoints

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
    e.g. :class:`facecheck.features.views.RegionView`'s four region crops. Without a view, the
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
