"""How a decoded picture becomes a network's input: torch-free, so that the exported
(ONNX Runtime) scoring path prepares pixels exactly as the PyTorch path does."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

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
    # keeps its own compression history (a source shortcut; see facecheck.evaluation.audit).
    # None: off.
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
        import torch

        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def __call__(self, image: Image.Image) -> torch.Tensor:
        import torch

        return self.normalize(torch.from_numpy(self.pixels(image)))
