"""The face stage: find the face, decide what to score, and align it like the training crops.

Every detector sees the same thing: a decoded picture goes through :class:`FaceStage`, which
returns a :class:`FaceAnalysis` (what was found and what will be done) and, from it, the
picture to score. Outcomes are explicit:

- one face filling most of the picture (a tight crop, like ``../shared/data``): scored as it
  is (``passthrough``), so crops keep exactly the pixels the models were trained on;
- one smaller face (a selfie with background, a photographed ID): rotated so the eyes are
  level and cropped with the framing of the rff training crops (``aligned``);
- no face: :class:`NoFaceError`; two or more faces: :class:`MultipleFacesError`. Both are
  :class:`~facecheck.image.decode.ImageError` subclasses, so batch code handles them like any bad
  input (one never stops the others), and their ``code`` becomes the verdict.

Face detectors are pluggable (:data:`FACE_DETECTORS`): MediaPipe 0.10.21's BlazeFace is the
default (weights inside the wheel, 6 keypoints), OpenCV's Haar cascade the fallback (boxes only).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from facecheck.image.decode import ImageError
from facecheck.image.geometry import GREY, crop_padded
from facecheck.image.regions import eye_frame, region_boxes

# BlazeFace's six keypoints, named as seen in the picture (the rff file-name convention:
# "left eye" is the eye on the left of the image).
KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth", "left_ear", "right_ear")

# Framing of the rff real training crops: the crop's side is 1.62 face boxes, and its centre
# sits 0.23 box widths above the box centre (the box starts at the brows). Medians over the
# rff reals, first measured with BlazeFace's short-range model alone; benchmarks/face_stage.py
# measures them with the whole stage (1.633 and -0.229 in benchmarks/face_stage.md).
CROP_SCALE = 1.62
CROP_OFFSET_Y = -0.23
# Bumped whenever detection or cropping changes what the stage outputs, so that cached
# decisions and features of aligned crops are never reused across versions.
ALGORITHM = 2
# Outside the picture (a face at its border) is filled with mid grey (GREY).
# Aligned crops larger than this are made from a shrunk picture (models see 224 px).
MAX_CROP = 512
# Pictures are shrunk (by an integer factor) until their long side is at most about this
# before detection.
DETECT_SIDE = 320
# The refining pass looks at a window twice the face's width, shrunk to at most this.
REFINE_SIDE = 640


class FaceError(ImageError):
    """The picture decoded, but does not hold exactly one face to score."""

    code = "face_error"


class NoFaceError(FaceError):
    code = "no_face"


class MultipleFacesError(FaceError):
    code = "multiple_faces"


@dataclass(frozen=True)
class Face:
    """One detection, in pixels of the (upright, decoded) input picture."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    keypoints: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    def scaled(self, k: float, dx: float = 0.0, dy: float = 0.0) -> Face:
        """The same face in another picture's pixels: ``p * k + (dx, dy)``."""
        x0, y0, x1, y1 = self.box
        box = (x0 * k + dx, y0 * k + dy, x1 * k + dx, y1 * k + dy)
        kps = {n: (x * k + dx, y * k + dy) for n, (x, y) in self.keypoints.items()}
        return Face(box, self.score, kps)

    def eye_angle(self) -> float:
        """Degrees the picture must turn (counter-clockwise) to level the eyes; 0 if unknown."""
        if "left_eye" not in self.keypoints or "right_eye" not in self.keypoints:
            return 0.0
        (lx, ly), (rx, ry) = self.keypoints["left_eye"], self.keypoints["right_eye"]
        return math.degrees(math.atan2(ry - ly, rx - lx))

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["box"] = [round(v, 1) for v in self.box]
        d["score"] = round(self.score, 4)
        d["keypoints"] = {k: [round(v, 1) for v in p] for k, p in self.keypoints.items()}
        return d


class FaceDetector:
    """Interface: ``detect(rgb uint8 HxWx3) -> faces``, best first, in pixels."""

    name = "base"

    def detect(self, rgb: np.ndarray) -> list[Face]:
        raise NotImplementedError


class BlazeFaceDetector(FaceDetector):
    """MediaPipe 0.10.21 BlazeFace: short-range model, full-range when that finds nothing.

    MediaPipe's graphs are not thread-safe, so calls are serialised by a lock.
    """

    name = "blazeface"

    def __init__(self, min_score: float = 0.5):
        # MediaPipe's C++ logging would print to stderr on every start; keep warnings only.
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            from mediapipe.python.solutions import face_detection
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise RuntimeError(
                "the blazeface face detector needs mediapipe==0.10.21 "
                "(`make install` installs it; see pyproject.toml)"
            ) from exc
        with _quiet_stderr():  # the graphs' C++ start-up messages are not for our users
            self._models = [
                face_detection.FaceDetection(model_selection=m, min_detection_confidence=min_score)
                for m in (0, 1)
            ]
            blank = np.zeros((64, 64, 3), np.uint8)
            for model in self._models:
                model.process(blank)
        self._lock = threading.Lock()

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        rgb = np.ascontiguousarray(rgb)
        with self._lock:
            for model in self._models:
                found = model.process(rgb).detections or []
                if found:
                    break
        faces = []
        for det in found:
            rel = det.location_data.relative_bounding_box
            box = (
                rel.xmin * w,
                rel.ymin * h,
                (rel.xmin + rel.width) * w,
                (rel.ymin + rel.height) * h,
            )
            kps = {
                name: (kp.x * w, kp.y * h)
                for name, kp in zip(KEYPOINTS, det.location_data.relative_keypoints, strict=False)
            }
            faces.append(Face(box, float(det.score[0]), kps))
        return sorted(faces, key=lambda f: -f.score)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (native libraries write there directly, not via Python)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class HaarDetector(FaceDetector):
    """OpenCV's frontal-face Haar cascade: boxes only (no keypoints, so no rotation)."""

    name = "haar"

    def __init__(self) -> None:
        try:
            import cv2
        except ImportError as exc:  # pragma: no cover
            raise RuntimeError("the haar face detector needs opencv-python-headless") from exc
        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(
            cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        )

    def detect(self, rgb: np.ndarray) -> list[Face]:
        grey = self._cv2.cvtColor(rgb, self._cv2.COLOR_RGB2GRAY)
        found = self._cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5)
        faces = [Face((x, y, x + w, y + h), 1.0) for x, y, w, h in found]
        return sorted(faces, key=lambda f: -f.width)


FACE_DETECTORS: dict[str, Callable[[], FaceDetector]] = {
    "blazeface": BlazeFaceDetector,
    "haar": HaarDetector,
}
_detectors: dict[str, FaceDetector] = {}
_detectors_lock = threading.Lock()


def get_face_detector(name: str) -> FaceDetector:
    """One shared instance per detector name (the models load once per process)."""
    if name not in FACE_DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; known: {sorted(FACE_DETECTORS)}")
    with _detectors_lock:
        if name not in _detectors:
            _detectors[name] = FACE_DETECTORS[name]()
        return _detectors[name]


# Codes of FaceAnalysis.action, for the compact cached form.
ACTIONS = ("passthrough", "aligned", "no_face", "multiple_faces")


@dataclass(frozen=True)
class FaceAnalysis:
    """What the face stage found in one picture and what it will score."""

    action: str  # one of ACTIONS
    n_faces: int
    face: Face | None = None

    @property
    def scorable(self) -> bool:
        return self.action in ("passthrough", "aligned")

    def to_dict(self) -> dict[str, object]:
        return {
            "action": self.action,
            "n_faces": self.n_faces,
            "face": self.face.to_dict() if self.face else None,
        }

    def to_vector(self) -> np.ndarray:
        """A fixed-length float vector, so analyses cache beside features (by content hash)."""
        v = np.full(3 + 4 + 2 * len(KEYPOINTS), np.nan, np.float32)
        v[0], v[1] = ACTIONS.index(self.action), self.n_faces
        if self.face is not None:
            v[2] = self.face.score
            v[3:7] = self.face.box
            for i, name in enumerate(KEYPOINTS):
                if name in self.face.keypoints:
                    v[7 + 2 * i : 9 + 2 * i] = self.face.keypoints[name]
        return v

    @classmethod
    def from_vector(cls, v: np.ndarray) -> FaceAnalysis:
        action, n = ACTIONS[int(v[0])], int(v[1])
        face = None
        if not np.isnan(v[2]):
            kps = {
                name: (float(v[7 + 2 * i]), float(v[8 + 2 * i]))
                for i, name in enumerate(KEYPOINTS)
                if not np.isnan(v[7 + 2 * i])
            }
            face = Face(tuple(float(x) for x in v[3:7]), float(v[2]), kps)  # type: ignore[arg-type]
        return cls(action, n, face)

    def raise_if_unscorable(self, name: str = "image") -> None:
        if self.action == "no_face":
            raise NoFaceError(f"{name}: no face found")
        if self.action == "multiple_faces":
            raise MultipleFacesError(f"{name}: {self.n_faces} faces found; exactly one is needed")


@dataclass(frozen=True)
class FaceStage:
    """Face detection -> passthrough / alignment, with explicit no-face and several-face outcomes.

    ``mode="off"`` scores every picture as given (the behaviour of bundles made before the
    face stage existed). ``mode="auto"``: tight crops pass through, smaller faces are aligned.
    ``mode="align"``: every face is aligned and re-cropped, tight crops included.

    A face *counts* (for ``multiple_faces``) at ``count_score`` or more: BlazeFace's spurious
    second detections on the one-face rff/UTKFace crops score at most 0.68. A face at least
    ``passthrough_width`` of the picture's width is a tight crop (the face is 0.50+ of the
    width in 95% of rff crops, 0.86+ in UTKFace's). Both figures: benchmarks/face_stage.md.

    The aligned crop's framing: ``anchor="box"`` (the default) centres it ``crop_offset_y``
    face-box widths from the box's centre, ``crop_scale`` box widths on a side, like the
    training crops; ``anchor="regions"`` centres it on the four region boxes placed by the
    keypoints (eyes, nose, mouth; see :mod:`facecheck.regions`), ``crop_scale`` inter-ocular
    distances on a side (a window for backbones that read only that part). ``rotate=False``
    keeps the picture's axes instead of levelling the eyes (no rotation to resample).
    """

    mode: str = "auto"
    detector: str = "blazeface"
    count_score: float = 0.75
    passthrough_width: float = 0.45
    crop_scale: float = CROP_SCALE
    crop_offset_y: float = CROP_OFFSET_Y
    anchor: str = "box"
    rotate: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("off", "auto", "align"):
            raise ValueError(f"face stage mode must be off, auto or align, not {self.mode!r}")
        if self.anchor not in ("box", "regions"):
            raise ValueError(f"face stage anchor must be box or regions, not {self.anchor!r}")
        if self.detector not in FACE_DETECTORS:
            raise ValueError(
                f"unknown face detector {self.detector!r}; known: {sorted(FACE_DETECTORS)}"
            )

    @property
    def active(self) -> bool:
        return self.mode != "off"

    @property
    def key(self) -> str:
        """Identity of the stage's decisions, for caches; '' when the stage is off."""
        if not self.active:
            return ""
        return (
            f"face{ALGORITHM}-{self.mode}-{self.detector}-c{self.count_score}"
            f"-p{self.passthrough_width}"
            f"-s{self.crop_scale}-o{self.crop_offset_y}"
            # Only a non-default framing adds to the key: existing caches stay valid.
            + (f"-a{self.anchor}" if self.anchor != "box" else "")
            + ("" if self.rotate else "-upright")
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> FaceStage:
        # Bundles written before the face stage say {"mode": "passthrough"}: scored as given.
        if not d or d.get("mode") == "passthrough":
            return cls(mode="off")
        return cls(**d)

    def analyse(self, image: Image.Image) -> FaceAnalysis:
        """Detect faces and decide: passthrough, aligned, no_face or multiple_faces."""
        if not self.active:
            return FaceAnalysis("passthrough", 0)
        # Detectors look at 128-192 px inputs: a large photo is shrunk first (that is most of
        # the time on a 12-megapixel selfie), and boxes are scaled back to its pixels.
        # Only the shrunk picture and, later, windows around the face become arrays:
        # converting a whole 1200x900 Pillow picture alone costs ~6 ms on this CPU.
        small = _shrunk_array(image, DETECT_SIDE)
        scale = small.shape[1] / image.width
        faces = get_face_detector(self.detector).detect(small)
        if not faces:
            faces = self._detect_padded(small)
        if scale != 1.0:
            faces = [f.scaled(1 / scale) for f in faces]
        if not faces:
            return FaceAnalysis("no_face", 0)
        counted = [f for f in faces if f.score >= self.count_score]
        if len(counted) > 1:
            return FaceAnalysis("multiple_faces", len(counted), counted[0])
        best = faces[0]
        tight = best.width >= self.passthrough_width * image.width
        if tight and self.mode == "auto":
            return FaceAnalysis("passthrough", 1, best)
        return FaceAnalysis("aligned", 1, self._refine(image, best))

    def _refine(self, image: Image.Image, face: Face) -> Face:
        """Detect again in a window twice the face's size, at full resolution.

        A small face seen in the whole (shrunk) picture gets coarse keypoints (eye angles
        were off by 10 degrees on a 300 px face in a 1200 px picture); framed like the
        training crops, BlazeFace places them as well as on those.
        """
        cx, cy = face.centre
        side = 2 * round(face.width)
        x0, y0 = round(cx) - side // 2, round(cy) - side // 2
        small = _shrunk_array(crop_padded(image, (x0, y0, x0 + side, y0 + side)), REFINE_SIDE)
        found = get_face_detector(self.detector).detect(small)
        if not found:
            return face
        return found[0].scaled(side / small.shape[1], x0, y0)

    def _detect_padded(self, rgb: np.ndarray) -> list[Face]:
        """Retry on a grey-padded copy: a face that fills the frame edge to edge is often
        missed by BlazeFace, which was trained on faces with some context around them."""
        h, w = rgb.shape[:2]
        pad = max(h, w) // 4
        padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), constant_values=128)
        faces = get_face_detector(self.detector).detect(padded)
        return [f.scaled(1.0, -pad, -pad) for f in faces]

    def crop(self, image: Image.Image, analysis: FaceAnalysis) -> Image.Image:
        """The picture to score: the input (passthrough) or the aligned face crop."""
        if analysis.action == "passthrough":
            return image
        n, m = self.crop_transform(analysis)
        # A very large face is first shrunk (area filter), so the crop is at most about
        # MAX_CROP px: the model looks at 224 px anyway.
        factor = self._shrink_factor(analysis)
        if factor > 1:
            image = image.reduce(factor)
            m = m / factor
        # Every pixel of the crop lies within r of its centre: only that window is read.
        ox, oy = m @ np.array([n / 2, n / 2, 1.0])
        r = math.ceil(n * math.hypot(m[0, 0], m[1, 0]) / math.sqrt(2)) + 2
        x0, y0 = round(ox) - r, round(oy) - r
        rgb = _rgb_array(crop_padded(image, (x0, y0, x0 + 2 * r, y0 + 2 * r)))
        m = m - np.array([[0, 0, x0], [0, 0, y0]], np.float64)
        cv2 = _cv2()
        out = cv2.warpAffine(
            rgb,
            m,
            (n, n),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,  # m maps output -> picture
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=GREY,
        )
        return Image.fromarray(out)

    def uncrop(
        self, values: np.ndarray, analysis: FaceAnalysis, size: tuple[int, int]
    ) -> np.ndarray:
        """A float map over the aligned crop, drawn back onto a picture of ``size`` (0 outside)."""
        _, m = self.crop_transform(analysis)
        cv2 = _cv2()
        return cv2.warpAffine(values.astype(np.float32), m, size, flags=cv2.INTER_LINEAR)

    def _shrink_factor(self, analysis: FaceAnalysis) -> int:
        return max(1, int(self._frame(analysis)[2] // MAX_CROP))

    def _angle(self, face: Face) -> float:
        """The crop's rotation in radians: the eye line's angle, or 0 with ``rotate=False``."""
        return math.radians(face.eye_angle()) if self.rotate else 0.0

    def _frame(self, analysis: FaceAnalysis) -> tuple[float, float, float]:
        """The crop's centre (x, y) in the picture and its side, before rotation."""
        face = analysis.face
        assert face is not None
        if self.anchor == "regions" and {"left_eye", "right_eye", "mouth"} <= set(face.keypoints):
            boxes = region_boxes(face.keypoints, (1 << 30, 1 << 30))
            x0, y0 = min(b[0] for b in boxes.values()), min(b[1] for b in boxes.values())
            x1, y1 = max(b[2] for b in boxes.values()), max(b[3] for b in boxes.values())
            return (x0 + x1) / 2, (y0 + y1) / 2, self.crop_scale * eye_frame(face.keypoints)[2]
        # The box's framing (also for a detector without keypoints): the centre sits
        # crop_offset_y box widths from the box's centre, across the eye line.
        cx, cy = face.centre
        theta = self._angle(face)
        dy = self.crop_offset_y * face.width
        return cx - math.sin(theta) * dy, cy + math.cos(theta) * dy, face.width * self.crop_scale

    def crop_transform(self, analysis: FaceAnalysis) -> tuple[int, np.ndarray]:
        """The aligned crop's side ``n`` and the 2 x 3 map from its pixels to the picture's.

        One affine map: the crop's x axis runs along the eye line (so the eyes come out
        level; with ``rotate=False``, along the picture's own x axis), centred and sized as
        :meth:`_frame` says: ``crop_scale`` face widths around a centre ``crop_offset_y``
        widths from the face box's across that line (``anchor="box"``, as in the training
        crops), or ``crop_scale`` inter-ocular distances around the four region boxes
        (``anchor="regions"``). The explainer uses it to draw on the input.
        """
        analysis.raise_if_unscorable()
        face = analysis.face
        assert face is not None
        ox, oy, side = self._frame(analysis)  # centre of the crop in the picture, its side
        factor = max(1, int(side // MAX_CROP))
        n = round(side / factor)
        s = side / n
        theta = self._angle(face)
        cos, sin = math.cos(theta), math.sin(theta)
        a, b, d, e = s * cos, -s * sin, s * sin, s * cos
        return n, np.array([[a, b, ox - (a + b) * n / 2], [d, e, oy - (d + e) * n / 2]])

    def __call__(self, image: Image.Image, name: str = "image") -> tuple[Image.Image, FaceAnalysis]:
        """Analyse and crop in one go; raises :class:`FaceError` if there is not one face."""
        analysis = self.analyse(image)
        analysis.raise_if_unscorable(name)
        return self.crop(image, analysis), analysis


def scored_keypoints(
    picture: Image.Image, analysis: FaceAnalysis | None, stage: FaceStage | None
) -> dict[str, tuple[float, float]] | None:
    """Keypoints in the coordinates of the picture that is scored (after the stage's crop).

    Passthrough: the stage's own; aligned: mapped through the crop's affine map; stage off
    (or no keypoints): BlazeFace run on the picture. None if no face is found there either.
    """
    face = analysis.face if analysis is not None else None
    if face is not None and face.keypoints and analysis is not None and stage is not None:
        if analysis.action == "passthrough":
            return dict(face.keypoints)
        if analysis.action == "aligned":
            _, m = stage.crop_transform(analysis)
            inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
            return {k: tuple(inv @ np.array([x, y, 1.0])) for k, (x, y) in face.keypoints.items()}
    small = _shrunk_array(picture, DETECT_SIDE)
    found = get_face_detector("blazeface").detect(small)
    if not found or not found[0].keypoints:
        return None
    k = picture.width / small.shape[1]
    return dict(found[0].scaled(k).keypoints)


@functools.cache
def _cv2():
    """OpenCV, imported on first use (its resampling is several times faster than Pillow's)."""
    import cv2

    return cv2


def _rgb_array(image: Image.Image) -> np.ndarray:
    """uint8 H x W x 3. Only small pictures and windows are converted: a whole 1200x900
    Pillow picture alone costs ~6 ms on this CPU."""
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _shrunk_array(image: Image.Image, longest: int) -> np.ndarray:
    """The picture as an array, shrunk by an integer factor (box filter, fast) to a long side
    of at most ``longest``."""
    f = math.ceil(max(image.size) / longest)
    return _rgb_array(image.reduce(f) if f > 1 else image)
