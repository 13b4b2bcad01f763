"""What a detector says about one input: torch-free, shared by the PyTorch and the
exported (ONNX Runtime) scoring paths."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from facecheck.image.regions import REGIONS


@dataclass
class Verdict:
    """What ``check`` says about one input."""

    input: str
    verdict: str  # "real" | "fake" | "invalid_image" | "no_face" | "multiple_faces"
    fake_probability: float | None = None
    threshold: float | None = None
    sha256: str | None = None
    error: str | None = None
    error_code: str | None = None
    model_version: str | None = None
    # The face stage's decision: passthrough or aligned, the face box, keypoints and score.
    face: dict[str, object] | None = None
    # P(replaced) per region (left_eye, right_eye, nose, mouth), if the detector has them.
    regions: dict[str, float] | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


REGION_CHOICES = ("flagged", "all", "none")


def input_names(X: Sequence[object], names: Sequence[str] | None) -> list[str]:
    """What each input is called in its verdict: the given names, else its path (bytes:
    ``<bytes>``, a decoded image: its hash)."""
    if names:
        return list(names)
    return ["<bytes>" if isinstance(x, bytes) else str(getattr(x, "sha256", x)) for x in X]


def checked_regions(regions: str) -> str:
    """``regions`` of ``check`` (which inputs get region scores), or ValueError."""
    if regions not in REGION_CHOICES:
        raise ValueError(f"regions must be flagged, all or none, not {regions!r}")
    return regions


def rounded_regions(p: Sequence[float]) -> dict[str, float]:
    """A verdict's region scores: P(replaced) per region, REGIONS order, to 4 decimals."""
    return {r: round(float(x), 4) for r, x in zip(REGIONS, p, strict=True)}
