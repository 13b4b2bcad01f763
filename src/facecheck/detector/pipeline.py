"""The one path every image takes: decode -> (face stage) -> features -> head -> verdict.

:class:`Detector` is the scikit-learn-like estimator over images; it saves as a *bundle*
folder (``bundle.json`` + head weights) that names its backbone, weights, preprocessing and
threshold, and :meth:`Detector.load` refuses a bundle it cannot honour.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from facecheck import __version__
from facecheck.backbones.registry import (
    Backbone,
    Preprocessing,
    face_stage_for,
    load_backbone,
    resolve_name,
)
from facecheck.decision.calibration import Calibrator
from facecheck.decision.policy import choose_threshold, threshold_for_fpr
from facecheck.detector.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    BundleError,
    model_version,
    read_bundle,
)
from facecheck.detector.localise import RegionScorer
from facecheck.detector.verdict import Verdict, checked_regions, input_names, rounded_regions
from facecheck.features.cache import FeatureCache
from facecheck.features.extract import Extraction, FeatureExtractor, Source
from facecheck.features.views import PooledRegionView, RegionView, TokenView, region_view_kind
from facecheck.heads.models import HEADS, Head, fit_head, make_head, split_head_spec
from facecheck.image.decode import ImageError
from facecheck.image.faces import FaceAnalysis, FaceError, FaceStage
from facecheck.image.regions import REGIONS

# What a head reads, and how a bundle's model version says it.
HEAD_INPUTS = {
    "image": "the picture's features",
    "image+regions": "the picture and its four regions",
    "tokens": "the picture, its four regions and every patch token",
}
_INPUT_TAG = {"image": "", "image+regions": "+regions", "tokens": "+tokens"}


class Detector:
    """Frozen backbone + trained head + operating threshold, over images.

    >>> det = Detector("efficientnet_lite0", "logreg").fit(train_paths, y_train)
    >>> det.set_threshold_from(val_paths, y_val, rule="youden")
    >>> det.predict_proba(test_paths)[:, 1]
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        head: str = "logreg",
        *,
        head_params: dict | None = None,
        tta: bool = False,
        weights: str | Path | None = None,
        allow_download: bool = False,
        threshold: float = 0.5,
        cache: FeatureCache | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        face_stage: FaceStage | str = "auto",
        region_view: str = "auto",
        head_input: str = "image",
    ):
        if region_view not in ("auto", "crops", "pooled"):
            raise ValueError(f"region_view must be auto, crops or pooled, got {region_view!r}")
        self.backbone_name = resolve_name(backbone)
        # Region scores from four crops through the backbone, or from its map pooled inside
        # the region boxes (one pass; see regions.PooledRegionView). "auto": pooled for CLIP
        # (a ViT's 14 x 14 patch tokens localise better than its crops cost), crops for CNNs
        # (their 7 x 7 map is too coarse; benchmarks/localise.md).
        if region_view == "auto":
            region_view = "pooled" if self.backbone_name.startswith("clip") else "crops"
        # What the head reads: the picture's features, or those followed by the four
        # regions' pooled features from the same pass (a region-aware head; P1 0.956 against
        # 0.933 by CV with CLIP, benchmarks/clip_p1.md). Its region scores then reuse them.
        # "tokens": those and every patch token of the pass, for a head that looks for the
        # seam itself (models.TokenMILHead; benchmarks/token_mil.md).
        if head_input not in HEAD_INPUTS:
            choices = ", ".join(HEAD_INPUTS)
            raise ValueError(f"head_input must be one of {choices}, got {head_input!r}")
        if head_input != "image" and region_view != "pooled":
            raise ValueError(f"head_input {head_input} reads pooled region features")
        self.head_input = head_input
        self.region_view = region_view
        self.face_stage = (
            face_stage
            if isinstance(face_stage, FaceStage)
            else face_stage_for(self.backbone_name, face_stage)
        )
        # "mlp:focal" is kind "mlp" with imbalance "focal" (see models.make_head).
        self.head_kind, from_spec = split_head_spec(head)
        self.head_params = {**from_spec, **(head_params or {})}
        check_head_input(self.head_kind, head_input)
        self.tta = tta
        self.weights = weights
        self.allow_download = allow_download
        self.threshold = float(threshold)
        self.threshold_rule = "default"
        self.cache = cache
        self.batch_size = batch_size
        self.progress = progress
        self.head: Head | None = None
        self.calibration: Calibrator | None = None
        self.metadata: dict[str, object] = {}
        self.regions: RegionScorer | None = None
        self._extractor: FeatureExtractor | None = None
        self._region_extractor: FeatureExtractor | None = None
        self._joint_extractor: FeatureExtractor | None = None

    # -- features
    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            bb = load_backbone(self.backbone_name, self.weights, allow_download=self.allow_download)
            self._extractor = FeatureExtractor(
                bb,
                self.cache,
                batch_size=self.batch_size,
                tta=self.tta,
                progress=self.progress,
                face_stage=self.face_stage,
                view=head_view(bb, self.head_input),
            )
        return self._extractor

    @property
    def region_extractor(self) -> FeatureExtractor:
        """Features of the four regions (same backbone, same face stage)."""
        if self._region_extractor is None:
            size = self.backbone.preprocessing.size
            self._region_extractor = self._viewing(
                PooledRegionView() if self.region_view == "pooled" else RegionView(size)
            )
        return self._region_extractor

    @property
    def joint_extractor(self) -> FeatureExtractor:
        """The picture's features followed by the four regions' pooled features, one pass
        (the main extractor itself for a region-aware head)."""
        if self.with_regions:
            return self.extractor
        if self._joint_extractor is None:
            self._joint_extractor = self._viewing(PooledRegionView(with_image=True))
        return self._joint_extractor

    def _viewing(self, view: RegionView | PooledRegionView) -> FeatureExtractor:
        """An extractor of ``view`` on the loaded backbone, with this detector's settings."""
        return FeatureExtractor(
            self.backbone,
            self.cache,
            batch_size=self.batch_size,
            progress=self.progress,
            face_stage=self.face_stage,
            view=view,
        )

    @property
    def with_regions(self) -> bool:
        """Whether the head reads the regions' features after the picture's."""
        return self.head_input != "image"

    @property
    def region_columns(self) -> slice:
        """Where the four regions' pooled features lie in a row of :attr:`extractor`'s
        (region-aware heads only)."""
        dim = self.backbone.dim
        return slice(dim, dim * (1 + len(REGIONS)))

    @property
    def backbone(self) -> Backbone:
        return self.extractor.backbone

    def features(
        self,
        X: Sequence[Source],
        hashes: Sequence[str] | None = None,
        *,
        skip_faceless: bool = False,
    ) -> np.ndarray:
        """Feature rows for images; raises on the first image that cannot be decoded.

        With ``skip_faceless`` the rows of pictures the face stage refused (no face, several
        faces) are NaN instead of an error; callers drop them (see :func:`usable_rows`).
        """
        ex = self.extractor.extract(X, hashes)
        errors = ex.errors
        if skip_faceless:
            errors = {i: e for i, e in errors.items() if not isinstance(e, FaceError)}
        if errors:
            _, err = next(iter(sorted(errors.items())))
            raise ImageError(f"{len(errors)} input(s) could not be read; first: {err}")
        return ex.features

    def region_features(
        self,
        X: Sequence[Source],
        hashes: Sequence[str] | None = None,
        faces: dict[int, FaceAnalysis] | None = None,
    ) -> np.ndarray:
        """Region feature rows (n, 4 * dim); NaN rows for pictures that cannot be scored.
        ``faces``: the face stage's decisions already made for these inputs, by index."""
        if self.with_regions:  # the image pass has them, after the picture's own features
            ex = self.extractor.extract(X, hashes, faces=faces)
            return ex.features[:, self.region_columns]
        ex = self.region_extractor.extract(X, hashes, desc="region features", faces=faces)
        return ex.features

    def fit_regions(self, F: np.ndarray, Y: np.ndarray) -> Detector:
        """Learn region scores from region features and region bits (see localise)."""
        self.regions = RegionScorer(seed=int(self.head_params.get("seed", 0))).fit(F, Y)
        return self

    # -- estimator API
    def fit(
        self,
        X: Sequence[Source],
        y: Sequence[int],
        hashes: Sequence[str] | None = None,
        regions: np.ndarray | None = None,
    ) -> Detector:
        """Fit the head on pictures; ``regions`` (n, 4) region bits, NaN unknown, teach a
        head that learns them which region was replaced (see ``localise.region_bits``)."""
        return self.fit_features(self.features(X, hashes), np.asarray(y), regions)

    def fit_features(
        self,
        F: np.ndarray,
        y: np.ndarray,
        regions: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> Detector:
        params = {**input_params(self.backbone, self.head_input), **self.head_params}
        head = make_head(self.head_kind, **params)
        self.head = fit_head(head, F, y, regions, sample_weight)
        return self

    def score_features(self, F: np.ndarray) -> np.ndarray:
        """P(fake) for feature rows: the head's score, through the calibration if any."""
        p = self._require_head().predict_proba(F)[:, 1]
        return self.calibration.transform(p) if self.calibration is not None else p

    def predict_proba(self, X: Sequence[Source], hashes: Sequence[str] | None = None) -> np.ndarray:
        p = self.score_features(self.features(X, hashes))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X: Sequence[Source], hashes: Sequence[str] | None = None) -> np.ndarray:
        return (self.predict_proba(X, hashes)[:, 1] >= self.threshold).astype(np.int64)

    def set_threshold_from(
        self,
        X: Sequence[Source] | np.ndarray,
        y: Sequence[int],
        *,
        rule: str = "youden",
        features: bool = False,
        groups: Sequence[str] | np.ndarray | None = None,
    ) -> float:
        """Choose the operating threshold on *validation* images (or their features);
        ``groups`` (each image's source) let the ``fpr`` rule hold every real source to it."""
        F = np.asarray(X) if features else self.features(X)
        scores = self.score_features(F)
        self.threshold = choose_threshold(np.asarray(y), scores, rule, groups=groups)
        self.threshold_rule = rule
        return self.threshold

    def calibrate_from(
        self,
        X: Sequence[Source] | np.ndarray,
        y: Sequence[int],
        *,
        fake_rate: float | None = None,
        features: bool = False,
    ) -> Calibrator:
        """Temperature-scale the head's scores on *validation* data (see calibration.Calibrator).

        With ``fake_rate`` the probabilities are also shifted to that prior (e.g. 0.001 for
        the bank's stream). Ranking is unchanged; a threshold already chosen is carried over
        to the calibrated scale, so verdicts stay the same.
        """
        F = np.asarray(X) if features else self.features(X)
        self.calibration = None
        raw = self.score_features(F)
        cal = Calibrator("temperature", fake_rate=fake_rate).fit(raw, np.asarray(y))
        if self.threshold_rule != "default":
            self.threshold = float(cal.transform(np.array([self.threshold]))[0])
        self.calibration = cal
        return cal

    def calibrate_threshold(self, photos: Sequence[Source], max_fpr: float) -> dict[str, object]:
        """Set the threshold from a deployment's own photos: the lowest that flags at most
        ``max_fpr`` of them (:func:`facecheck.decision.policy.threshold_for_fpr`).

        The photos are unlabelled; at a fake rate of 1 in 1,000 a sample of them is reals for
        this purpose. No rule fitted on validation can know where a real source the detector
        never saw scores (P7: 40-100% of an unseen source flagged); its own photos can.
        Pictures that cannot be scored (unreadable, no face, several) are left out and
        counted. Returns what is also recorded in the bundle's metadata.
        """

        verdicts = self.check(photos, regions="none")
        scores = np.array([v.fake_probability for v in verdicts if v.fake_probability is not None])
        if len(scores) == 0:
            raise ValueError("none of the photos could be scored: nothing to calibrate on")
        digests = sorted(str(v.sha256) for v in verdicts if v.fake_probability is not None)
        before, rule = self.threshold, self.threshold_rule
        self.threshold = threshold_for_fpr(np.zeros(len(scores)), scores, max_fpr)
        self.threshold_rule = f"fpr:{max_fpr:g} on {len(scores)} deployment photos"
        record = {
            "max_fpr": max_fpr,
            "n_photos": len(scores),
            "n_left_out": len(verdicts) - len(scores),
            "flagged_share": round(float((scores >= self.threshold).mean()), 4),
            "photos_fingerprint": hashlib.sha256("".join(digests).encode()).hexdigest()[:16],
            "previous_threshold": before,
            "previous_rule": rule,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.metadata["deployment_calibration"] = record
        return record

    def check(
        self,
        X: Sequence[Source],
        names: Sequence[str] | None = None,
        *,
        regions: str = "flagged",
    ) -> list[Verdict]:
        """Score each input; one that cannot be read gets an ``invalid_image`` verdict.

        If the detector has region scores, ``regions`` says for which inputs to compute how
        likely each region is to have been replaced: ``"flagged"`` (verdict fake: what a
        reviewer looks at; the four region crops cost about three times the image's own
        features), ``"all"`` or ``"none"``.
        """
        return self.check_with_extraction(X, names, regions=regions)[0]

    def check_with_extraction(
        self,
        X: Sequence[Source],
        names: Sequence[str] | None = None,
        *,
        regions: str = "flagged",
        keep_maps: bool = False,
    ) -> tuple[list[Verdict], Extraction]:
        """:meth:`check`, also returning the extraction behind the verdicts (the face
        stage's decisions and, with ``keep_maps`` and pooled region scores, the backbone's
        maps from the same pass): what an explanation is drawn from."""
        checked_regions(regions)
        self._require_head()
        names = input_names(X, names)
        # Pooled region features come from the image's own pass (image + regions in one):
        # flagged images then cost no second pass.
        joint = self.regions is not None and self.region_view == "pooled" and regions != "none"
        joint = joint and not self.tta
        if joint:
            ex = self.joint_extractor.extract(X, keep_maps=keep_maps)
        else:
            ex = self.extractor.extract(X)
        dim = self.backbone.dim
        image = ex.features[:, :dim] if joint and not self.with_regions else ex.features
        ok = ex.ok
        probs = np.full(len(X), np.nan)
        region_p = np.full((len(X), len(REGIONS)), np.nan)
        if ok.any():
            probs[ok] = self.score_features(image[ok])
            wanted = ok if regions == "all" else ok & (np.nan_to_num(probs) >= self.threshold)
            if regions != "none" and self.regions is not None and wanted.any():
                idx = np.flatnonzero(wanted)
                if self.with_regions:  # the image pass computed them
                    F = ex.features[idx, self.region_columns]
                elif joint:
                    F = ex.features[idx, dim:]
                else:
                    # The image pass has made the face stage's decisions: not made again.
                    F = self.region_features(
                        [X[i] for i in idx],
                        [ex.hashes[i] for i in idx],
                        {j: ex.faces[i] for j, i in enumerate(idx) if i in ex.faces},
                    )
                region_p[idx] = self.regions.predict_proba(F)
        out = []
        for i, name in enumerate(names):
            face = ex.faces[i].to_dict() if i in ex.faces else None
            if i in ex.errors:
                err = ex.errors[i]
                out.append(
                    Verdict(
                        name,
                        # No face / several faces are verdicts a bank acts on, not bad files.
                        err.code if isinstance(err, FaceError) else "invalid_image",
                        error=str(err),
                        error_code=err.code,
                        sha256=ex.hashes[i] or None,
                        model_version=self.version,
                        face=face,
                    )
                )
            else:
                p = float(probs[i])
                out.append(
                    Verdict(
                        name,
                        "fake" if p >= self.threshold else "real",
                        p,
                        self.threshold,
                        ex.hashes[i],
                        model_version=self.version,
                        face=face,
                        regions=None
                        if np.isnan(region_p[i]).any()
                        else rounded_regions(region_p[i]),
                    )
                )
        return out, ex

    def _require_head(self) -> Head:
        if self.head is None:
            raise RuntimeError("this detector is not fitted: call fit() or Detector.load()")
        return self.head

    # -- persistence
    @property
    def version(self) -> str:
        return model_version(self.metadata)

    def save(self, directory: str | Path, **metadata: object) -> Path:
        """Write the bundle folder; ``metadata`` (training data, metrics) goes in bundle.json."""
        head = self._require_head()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        head_file = directory / "head.npz"
        head.save(head_file)
        digest = hashlib.sha256(head_file.read_bytes()).hexdigest()
        bb = self.backbone
        self.metadata = {
            **self.metadata,
            **metadata,
            "model_version": f"{bb.name}{_INPUT_TAG[self.head_input]}-"
            f"{self.head_kind}-{digest[:10]}",
        }
        bundle = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "facecheck_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "backbone": {
                "name": bb.name,
                "weights_id": bb.weights_id,
                "runtime": bb.runtime,
                # The precision the head's training features were extracted in (fp32, or
                # bf16 on a CPU that has it); served in either (benchmarks/cpu_precision.md).
                "precision": bb.precision,
                "dim": bb.dim,
                "licence": bb.licence,
            },
            "preprocessing": bb.preprocessing.to_dict(),
            "tta": self.tta,
            "face_stage": self.face_stage.to_dict(),
            "head_input": self.head_input,
            "head": {
                "kind": self.head_kind,
                "params": head.get_params(),
                "file": head_file.name,
                "sha256": digest,
            },
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "regions": (
                {**self.regions.save(directory), "view": self.region_extractor.view.key}  # type: ignore[union-attr]
                if self.regions is not None
                else None
            ),
            **self.metadata,
        }
        (directory / "bundle.json").write_text(json.dumps(bundle, indent=2, default=_jsonable))
        return directory

    @classmethod
    def load(
        cls,
        directory: str | Path | None = None,
        *,
        cache: FeatureCache | None = None,
        weights: str | Path | None = None,
        progress: bool = False,
    ) -> Detector:
        """Load a bundle (default: the one shipped in the package), checking it fits here."""
        directory, meta = read_bundle(directory)
        try:
            face_stage = FaceStage.from_dict(meta.get("face_stage"))
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{directory}: face stage {meta.get('face_stage')} ({exc})") from exc
        head_meta = meta["head"]
        if head_meta["kind"] not in HEADS:
            raise BundleError(f"{directory}: unknown head kind {head_meta['kind']!r}")
        head_file = directory / head_meta["file"]
        det = cls(
            meta["backbone"]["name"],
            head_meta["kind"],
            head_params=head_meta["params"],
            tta=bool(meta.get("tta", False)),
            weights=weights,
            threshold=float(meta["threshold"]),
            cache=cache,
            progress=progress,
            face_stage=face_stage,
            region_view=region_view_kind((meta.get("regions") or {}).get("view", "")),
            head_input=meta.get("head_input", "image"),
        )
        det.threshold_rule = meta.get("threshold_rule", "default")
        det.head = Head.from_file(head_meta["kind"], head_meta["params"], head_file)
        if meta.get("calibration"):
            det.calibration = Calibrator.from_dict(meta["calibration"])
        if meta.get("regions"):
            try:
                det.regions = RegionScorer.load(directory, meta["regions"])
            except (KeyError, ValueError, OSError) as exc:
                raise BundleError(f"{directory}: region scores unreadable ({exc})") from exc
        skip = {
            "format",
            "format_version",
            "backbone",
            "preprocessing",
            "tta",
            "face_stage",
            "head_input",
            "head",
            "threshold",
            "threshold_rule",
            "calibration",
            "regions",
        }
        det.metadata = {k: v for k, v in meta.items() if k not in skip}
        bb = det.backbone  # loads the weights now, so a mismatch fails at load time
        if bb.weights_id != meta["backbone"]["weights_id"]:
            raise BundleError(
                f"{directory}: trained on {bb.name} weights {meta['backbone']['weights_id']}, "
                f"but the installed weights are {bb.weights_id}; features would differ"
            )
        trained_on = meta["backbone"].get("runtime", "")
        if trained_on != bb.runtime:
            # Warned, not refused: a runtime upgrade must not stop a deployed detector, but
            # an INT8 model's features may round differently, so re-evaluate (P6) after one.
            warnings.warn(
                f"{directory}: head fitted on features from {trained_on or 'the fp32 runtime'}, "
                f"this machine runs {bb.runtime or 'the fp32 runtime'}; its scores may shift "
                "slightly: re-evaluate the bundle",
                stacklevel=2,
            )
        if Preprocessing.from_dict(meta["preprocessing"]) != bb.preprocessing:
            raise BundleError(f"{directory}: preprocessing differs from {bb.name}'s")
        if det.regions is not None and meta["regions"].get("view") != det.region_extractor.view.key:  # type: ignore[union-attr]
            raise BundleError(
                f"{directory}: region scores were trained on region features "
                f"{meta['regions'].get('view')}, this facecheck makes "
                f"{det.region_extractor.view.key}"  # type: ignore[union-attr]
            )
        if det.head.n_features_in != det.extractor.dim:
            raise BundleError(
                f"{directory}: head takes {det.head.n_features_in} features, "
                f"{bb.name} ({det.head_input}) gives {det.extractor.dim}"
            )
        return det


def check_head_input(head: str, head_input: str) -> None:
    """ValueError unless a head of kind ``head`` can read rows of ``head_input``: a
    region-aware head needs its input, and token rows suit only a token head."""
    wants = HEADS[split_head_spec(head)[0]].head_input
    if wants != "image" and head_input != wants:
        raise ValueError(
            f"head {head!r} reads {HEAD_INPUTS[wants]}: use head_input {wants} "
            f"(add --head-input {wants})"
        )
    if head_input == "tokens" and wants != "tokens":
        raise ValueError(f"head {head!r} does not read patch tokens (--head-input tokens)")


def head_view(bb: Backbone, head_input: str) -> PooledRegionView | None:
    """What the backbone's pass gives a head reading ``head_input`` (see HEAD_INPUTS)."""
    if head_input == "tokens":
        return TokenView(map_grid(bb))
    return PooledRegionView(with_image=True) if head_input == "image+regions" else None


def input_params(bb: Backbone, head_input: str) -> dict[str, object]:
    """What a head reading ``head_input`` must be told about the backbone: a token row's
    parts lie by the backbone's width (``dim``); the pooled rows need nothing."""
    return {"dim": bb.dim} if head_input == "tokens" else {}


def map_grid(bb: Backbone) -> tuple[int, int]:
    """The (rows, cols) of the backbone's map at its input size (one blank pass if the
    model does not say)."""
    grid = getattr(bb.model, "grid", None)
    if grid is None:
        size = bb.preprocessing.size
        device = next(bb.model.parameters()).device
        with torch.inference_mode():
            rows, cols = bb.feature_map(torch.zeros(1, 3, size, size, device=device)).shape[2:]
        grid = (rows, cols)
    return int(grid[0]), int(grid[1])


def _jsonable(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
