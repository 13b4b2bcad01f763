"""Class-imbalance strategies, each a named option that any trainer can apply.

A strategy is written as ``+``-joined parts, e.g. ``class_weight``, ``smote``,
``smote0.1+under0.5+focal`` (the thesis's ConvNeXt 3) or ``balanced_batches``:

- ``none``: plain loss, data as it is;
- ``class_weight``: loss weighted inversely to class frequency ("balanced");
- ``under[R]`` / ``undersample[R]``: random undersampling of reals to fakes/reals = R (default 1);
- ``smote[R]``: SMOTE (imbalanced-learn) synthesises fakes up to fakes/reals = R (default 1);
  applied in that order when both are given, as in the thesis (SMOTE, then undersampling);
- ``focal``: sigmoid focal loss (torchvision's; alpha 0.25, gamma 2, the thesis's settings);
- ``balanced_batches``: minibatches drawn with replacement so each class is half of them.

Resampling acts on the training rows only (feature vectors, or flattened pixels for a
fine-tuned network); validation and test data are never resampled. ``focal`` and
``balanced_batches`` need a trainer with minibatches, so the logistic head refuses them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from imblearn.over_sampling import SMOTE
from imblearn.under_sampling import RandomUnderSampler
from sklearn.utils.class_weight import compute_class_weight
from torchvision.ops import sigmoid_focal_loss

# The strategies compared in the benchmarks (P2, P3): each reproduces a thesis setting or a
# standard alternative to it.
STANDARD = (
    "none",
    "class_weight",
    "under",
    "smote",
    "smote0.1+under0.5",
    "smote0.4+under0.5",
    "smote0.4+under0.5+focal",
    "smote0.1+under0.5+focal",
    "focal",
    "balanced_batches",
)
_PART = re.compile(r"^(none|class_weight|focal|balanced_batches|smote|under|undersample)([0-9.]*)$")


@dataclass(frozen=True)
class Imbalance:
    """A parsed strategy; ``str(strategy)`` gives back its canonical name."""

    smote: float | None = None
    under: float | None = None
    class_weight: bool = False
    focal: bool = False
    balanced_batches: bool = False
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    @classmethod
    def parse(cls, name: str | Imbalance | None) -> Imbalance:
        if isinstance(name, Imbalance):
            return name
        if name is None or name == "":
            return cls()
        fields: dict[str, object] = {}
        for part in name.lower().split("+"):
            m = _PART.match(part.strip())
            if not m:
                raise ValueError(
                    f"unknown imbalance strategy part {part!r} in {name!r}; use none, "
                    "class_weight, under[R], smote[R], focal, balanced_batches joined by '+'"
                )
            word, ratio = m.groups()
            if word in ("smote", "under", "undersample"):
                r = float(ratio) if ratio else 1.0
                if not 0 < r <= 1:
                    raise ValueError(f"{word} ratio must be in (0, 1], got {r}")
                fields["smote" if word == "smote" else "under"] = r
            elif ratio:
                raise ValueError(f"{word!r} takes no ratio")
            elif word != "none":
                fields[word] = True
        return cls(**fields)

    def __str__(self) -> str:
        parts = []
        if self.smote is not None:
            parts.append(f"smote{self.smote:g}" if self.smote != 1 else "smote")
        if self.under is not None:
            parts.append(f"under{self.under:g}" if self.under != 1 else "under")
        parts += [w for w in ("class_weight", "focal", "balanced_batches") if getattr(self, w)]
        return "+".join(parts) or "none"

    @property
    def needs_minibatches(self) -> bool:
        return self.focal or self.balanced_batches

    # -- data
    def resample(
        self, X: np.ndarray, y: np.ndarray, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Training rows after SMOTE and/or undersampling (unchanged without either).

        A SMOTE or undersampling ratio the data already reach changes nothing (imbalanced-learn
        would refuse it), so that step is skipped rather than raising.
        """
        y = np.asarray(y)
        if self.smote is not None:
            n_fake, n_real = int((y == 1).sum()), int((y == 0).sum())
            if round(self.smote * n_real) > n_fake:
                if n_fake < 2:
                    raise ValueError("SMOTE needs at least 2 fakes in the training data")
                sm = SMOTE(
                    sampling_strategy=self.smote,
                    k_neighbors=min(5, n_fake - 1),
                    random_state=seed,
                )
                shape = X.shape[1:]
                Xr, y = sm.fit_resample(X.reshape(len(X), -1), y)
                X = Xr.reshape(len(Xr), *shape).astype(X.dtype, copy=False)
        n_fake, n_real = int((y == 1).sum()), int((y == 0).sum())
        if self.under is not None and n_fake < self.under * n_real:
            rus = RandomUnderSampler(sampling_strategy=self.under, random_state=seed)
            rus.fit_resample(np.zeros((len(y), 1)), y)
            idx = np.sort(rus.sample_indices_)
            X, y = X[idx], y[idx]
        return X, np.asarray(y)

    def class_weights(self, y: np.ndarray) -> np.ndarray:
        """Per-class loss weights [real, fake]; ones unless ``class_weight`` is set."""
        if not self.class_weight:
            return np.ones(2)
        return compute_class_weight("balanced", classes=np.array([0, 1]), y=np.asarray(y))

    # -- loss and batches (for trainers with minibatches)
    def loss(self, y: np.ndarray) -> torch.nn.Module:
        """The per-batch loss on fake logits, built for the (resampled) training labels."""
        w = self.class_weights(y)
        if self.focal:
            return FocalLoss(self.focal_alpha, self.focal_gamma, weights=w)
        return torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(w[1] / w[0], dtype=torch.float32))

    def batches(
        self, y: np.ndarray, batch_size: int, generator: torch.Generator
    ) -> list[torch.Tensor]:
        """One epoch of minibatch indices: shuffled, or class-balanced with replacement."""
        n = len(y)
        if self.balanced_batches:
            counts = np.bincount(np.asarray(y), minlength=2).astype(np.float64)
            weights = torch.from_numpy(1.0 / counts[np.asarray(y)])
            order = torch.multinomial(weights, n, replacement=True, generator=generator)
        else:
            order = torch.randperm(n, generator=generator)
        return list(order.split(batch_size))


class FocalLoss(torch.nn.Module):
    """Mean sigmoid focal loss (Lin et al. 2017) via torchvision, with optional class weights."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, weights: np.ndarray | None = None):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma
        w = np.ones(2) if weights is None else np.asarray(weights, dtype=np.float64)
        self.register_buffer("weights", torch.tensor(w, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per = sigmoid_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma)
        return (per * self.weights[targets.long()]).mean()
