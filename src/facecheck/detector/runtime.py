"""The torch-free scoring path: a bundle's exported graph (``facecheck export``) in ONNX
Runtime, behind the same ``check`` as :class:`facecheck.detector.pipeline.Detector`.

Nothing here imports torch: a cold ``facecheck check`` pays for numpy, Pillow, the face
stage and ONNX Runtime only. The pictures take the PyTorch path's own steps (decode, face
stage, crop, keypoints, resize, region pooling weights), so the scores are the same to 1e-4.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facecheck.backbones.preprocessing import Preprocessing
from facecheck.decision.calibration import Calibrator
from facecheck.detector.bundle import (
    BundleError,
    default_bundle_path,
    model_version,
    read_bundle,
    scoring_digest,
)
from facecheck.detector.verdict import Verdict, checked_regions, input_names, rounded_regions
from facecheck.features.cache import default_cache_dir
from facecheck.features.views import PooledRegionView
from facecheck.heads.link import sigmoid
from facecheck.image.decode import DecodedImage, ImageError, content_hash, decode, read_bytes
from facecheck.image.faces import FaceError, FaceStage, scored_keypoints

GRAPH_FORMAT = "facecheck.scoring/1"
BATCH = 4  # images per ONNX Runtime call

Source = str | Path | bytes | DecodedImage


def exported_graph_path(folder: Path, meta: dict, cache_dir: str | Path | None = None) -> Path:
    """Where a bundle's exported graph lives: in the bundle's own folder, or, for the bundle
    inside the installed package (the graph is ~230 MB, too large to ship), in the cache.
    The name carries the bundle's :func:`scoring_digest`, so a graph exported before the
    bundle's heads changed is never found for it."""
    digest = scoring_digest(folder, meta)
    if folder.resolve() != default_bundle_path().resolve():
        return folder / f"scoring-{digest}.onnx"
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    return cache / "export" / f"{model_version(meta)}-{digest}.onnx"


def threads() -> int:
    """ONNX Runtime's intra-op threads: ``FACECHECK_THREADS`` if set, else 0 (ONNX Runtime's
    own choice: one per physical core, right for a 2-core box and a many-core one)."""
    return int(os.environ.get("FACECHECK_THREADS", "0"))


class ExportedDetector:
    """A bundle scored by its exported graph; ``check`` as :meth:`Detector.check`.

    >>> det = ExportedDetector.load()          # the shipped bundle, if exported
    >>> det.check(["photo.jpg"])[0].verdict
    """

    def __init__(self, folder: Path, meta: dict, graph: Path):
        import onnxruntime as ort

        self.folder, self.meta, self.graph = folder, meta, graph
        self.threshold = float(meta["threshold"])
        self.threshold_rule = str(meta.get("threshold_rule", "default"))
        self.version = model_version(meta)
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        try:
            self.face_stage = FaceStage.from_dict(meta.get("face_stage"))
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{folder}: face stage {meta.get('face_stage')} ({exc})") from exc
        self.calibration = None
        if meta.get("calibration"):
            self.calibration = Calibrator.from_dict(meta["calibration"])
        # The session is built in a thread (ONNX Runtime lets go of the GIL), while this
        # one goes on to decode and find the face: a cold `check` pays for the longer of
        # the two, not their sum.
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads()
        self._session_future = concurrent.futures.ThreadPoolExecutor(1).submit(
            ort.InferenceSession, str(graph), opts, providers=["CPUExecutionProvider"]
        )
        self._session = None
        self.view = PooledRegionView()

    @property
    def session(self):
        """The ONNX Runtime session, its graph checked against the bundle (on first use)."""
        if self._session is None:
            self._session = self._checked(self._session_future.result())
        return self._session

    def _checked(self, session):
        folder, meta, graph = self.folder, self.meta, self.graph
        props = session.get_modelmeta().custom_metadata_map
        if props.get("facecheck_format") != GRAPH_FORMAT:
            raise BundleError(f"{graph}: not a facecheck scoring graph")
        if props.get("scoring_digest") != scoring_digest(folder, meta):
            raise BundleError(f"{graph}: exported from another bundle (run facecheck export)")
        rows, cols = props["grid"].split("x")
        self.grid = (int(rows), int(cols))
        self.has_regions = props.get("has_regions") == "1"
        return session

    @classmethod
    def load(
        cls, directory: str | Path | None = None, *, cache_dir: str | Path | None = None
    ) -> ExportedDetector:
        """The bundle (default: the shipped one) with its exported graph; BundleError if it
        has none or a stale one (``facecheck export`` writes it)."""
        folder, meta = read_bundle(directory)
        graph = exported_graph_path(folder, meta, cache_dir)
        if not graph.is_file():
            raise BundleError(f"{folder}: no exported graph at {graph} (run facecheck export)")
        return cls(folder, meta, graph)

    def _prepare(self, src: Source, seen: dict) -> tuple:
        """One input as the graph takes it: the scored picture (after the face stage's
        crop), its keypoints, its content hash and the face stage's decision (the PyTorch
        extractor's steps). The hash and the decision are also left in ``seen`` as they
        are known, so a refused picture's verdict still shows them."""
        if isinstance(src, DecodedImage):
            digest, picture = src.sha256, src.image
            seen["sha256"] = digest
        else:
            data = read_bytes(src)
            digest = seen["sha256"] = content_hash(data)
            name = str(src) if not isinstance(src, bytes) else "image"
            picture = decode(data, name=name).image
        analysis = None
        if self.face_stage.active:
            analysis = seen["analysis"] = self.face_stage.analyse(picture)
            if not analysis.scorable:
                name = str(src) if isinstance(src, str | Path) else "image"
                analysis.raise_if_unscorable(name)
            picture = self.face_stage.crop(picture, analysis)
        stage = self.face_stage if self.face_stage.active else None
        return picture, scored_keypoints(picture, analysis, stage), digest, analysis

    def scores(self, pixels: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P(fake) (through the bundle's calibration) and P(region replaced) for prepared
        inputs."""
        # A few images per call: on 2 cores 4 run at ~8 images/s, 64 at one go at ~6.5
        # (the activations leave the caches), and memory stays bounded.
        outs = [
            self.session.run(
                None,
                {"pixels": pixels[i : i + BATCH], "region_weights": weights[i : i + BATCH]},
            )
            for i in range(0, len(pixels), BATCH)
        ]
        logit = np.concatenate([o[0] for o in outs])
        region_logits = np.concatenate([o[1] for o in outs])
        p = sigmoid(logit)
        if self.calibration is not None:
            p = self.calibration.transform(p)
        return p, sigmoid(region_logits)

    def check(
        self,
        X: Sequence[Source],
        names: Sequence[str] | None = None,
        *,
        regions: str = "flagged",
    ) -> list[Verdict]:
        """Score each input; one that cannot be read gets an ``invalid_image`` verdict, one
        the face stage refuses its ``no_face`` / ``multiple_faces`` verdict."""
        checked_regions(regions)
        names = input_names(X, names)
        prepared: dict[int, tuple] = {}
        out: list[Verdict | None] = [None] * len(X)
        for i, src in enumerate(X):
            seen: dict = {}
            try:
                prepared[i] = self._prepare(src, seen)
            except ImageError as exc:
                analysis = seen.get("analysis")
                out[i] = Verdict(
                    names[i],
                    exc.code if isinstance(exc, FaceError) else "invalid_image",
                    error=str(exc),
                    error_code=exc.code,
                    sha256=seen.get("sha256"),
                    model_version=self.version,
                    face=analysis.to_dict() if analysis is not None else None,
                )
        if prepared:
            idx = list(prepared)
            self.session  # noqa: B018 -- ready, and its grid known
            pixels = np.stack([self.preprocessing.pixels(prepared[i][0]) for i in idx])
            weights = np.stack([self.view.weights(*prepared[i][:2], self.grid) for i in idx])
            weights = weights.astype(np.float32)
            probs, region_p = self.scores(pixels, weights)
            for j, i in enumerate(idx):
                _, _, digest, analysis = prepared[i]
                p = float(probs[j])
                show = self.has_regions and (
                    regions == "all" or (regions == "flagged" and p >= self.threshold)
                )
                out[i] = Verdict(
                    names[i],
                    "fake" if p >= self.threshold else "real",
                    p,
                    self.threshold,
                    digest,
                    model_version=self.version,
                    face=analysis.to_dict() if analysis is not None else None,
                    regions=rounded_regions(region_p[j]) if show else None,
                )
        return [v for v in out if v is not None]
