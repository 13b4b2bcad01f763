"""What a detector says about one input: torch-free, shared by the PyTorch and the
exported (ONNX Runtime) scoring paths."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
