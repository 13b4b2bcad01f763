"""Which region was edited: per-region scores from features of the four region crops.

A :class:`RegionScorer` holds one head per region (left eye, right eye, nose, mouth) over
the backbone's features of that region's crop (:class:`~facecheck.features.views.RegionView`). It
learns from the rff file-name bits: a fake's four bits say which regions were replaced, and
every region of an rff real is untouched. With ``shared_eyes`` (the default) one eye head
learns from both eyes (the right eye's crop is mirrored by the view), which doubles its
examples: on P1 it lifted the right eye's test ROC-AUC from 0.67 to 0.70
(``benchmarks/localise.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from facecheck.heads.link import logit
from facecheck.heads.models import HEADS, Head, make_head
from facecheck.image.regions import REGIONS

# Which head scores each region when the eyes share one.
_SHARED = {"left_eye": "eye", "right_eye": "eye", "nose": "nose", "mouth": "mouth"}


class RegionScorer:
    """P(region replaced) for each of the four regions, from region-crop features.

    >>> scorer = RegionScorer().fit(F_regions, Y)     # F: (n, 4 * dim), Y: (n, 4) bits
    >>> scorer.predict_proba(F_regions)               # (n, 4), REGIONS order
    """

    def __init__(self, head: str = "logreg", *, shared_eyes: bool = True, seed: int = 0):
        self.head = head
        self.shared_eyes = shared_eyes
        self.seed = seed
        self.heads_: dict[str, Head] = {}

    @property
    def _groups(self) -> dict[str, list[int]]:
        """Head name -> the region columns it scores."""
        names = _SHARED if self.shared_eyes else {r: r for r in REGIONS}
        out: dict[str, list[int]] = {}
        for k, region in enumerate(REGIONS):
            out.setdefault(names[region], []).append(k)
        return out

    @staticmethod
    def _split(F: np.ndarray) -> np.ndarray:
        F = np.asarray(F, dtype=np.float32)
        if F.ndim != 2 or F.shape[1] % len(REGIONS):
            raise ValueError(f"want (n, 4 * dim) region features, got {F.shape}")
        return F.reshape(len(F), len(REGIONS), -1)

    def fit(self, F: np.ndarray, Y: np.ndarray) -> RegionScorer:
        R, Y = self._split(F), np.asarray(Y)
        if Y.shape != R.shape[:2]:
            raise ValueError(f"labels {Y.shape} do not match features {R.shape[:2]}")
        self.heads_ = {}
        for name, cols in self._groups.items():
            X = np.concatenate([R[:, k] for k in cols])
            y = np.concatenate([Y[:, k] for k in cols])
            self.heads_[name] = make_head(self.head, seed=self.seed).fit(X, y)
        self.dim_ = R.shape[2]
        return self

    def predict_proba(self, F: np.ndarray) -> np.ndarray:
        if not self.heads_:
            raise RuntimeError("this region scorer is not fitted")
        R = self._split(F)
        P = np.zeros(R.shape[:2])
        for name, cols in self._groups.items():
            for k in cols:
                P[:, k] = self.heads_[name].predict_proba(R[:, k])[:, 1]
        return P

    def cell_logits(self, cells: np.ndarray) -> np.ndarray:
        """For each cell of a backbone's map (n_cells, dim), the highest logit any region
        head gives it: how replaced the cell looks to the scorer. Meaningful for pooled
        region features, which are weighted means of such cells (for a linear head, a
        region's logit is the pooled mean of its cells' logits)."""
        if not self.heads_:
            raise RuntimeError("this region scorer is not fitted")
        cells = np.asarray(cells, dtype=np.float32)
        return np.max([logit(h.predict_proba(cells)[:, 1]) for h in self.heads_.values()], axis=0)

    # -- persistence (a folder inside the detector bundle)
    def save(self, directory: str | Path) -> dict[str, object]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = {}
        for name, head in self.heads_.items():
            head.save(directory / f"region_{name}.npz")
            files[name] = f"region_{name}.npz"
        meta = {
            "head": self.head,
            "shared_eyes": self.shared_eyes,
            "params": {n: h.get_params() for n, h in self.heads_.items()},
            "files": files,
            "dim": self.dim_,
        }
        return json.loads(json.dumps(meta, default=_plain))

    @classmethod
    def load(cls, directory: str | Path, meta: dict) -> RegionScorer:
        kind = str(meta["head"]).partition(":")[0]
        if kind not in HEADS:
            raise ValueError(f"unknown region head {kind!r}")
        scorer = cls(meta["head"], shared_eyes=bool(meta["shared_eyes"]))
        scorer.heads_ = {
            name: Head.from_file(kind, meta["params"][name], Path(directory) / file)
            for name, file in meta["files"].items()
        }
        if set(scorer.heads_) != set(scorer._groups):
            raise ValueError(f"region heads {sorted(scorer.heads_)} != {sorted(scorer._groups)}")
        scorer.dim_ = int(meta["dim"])
        return scorer


def _plain(obj: object) -> object:
    return obj.item() if isinstance(obj, np.generic) else str(obj)
