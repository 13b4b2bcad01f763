"""Heads on frozen features, with scikit-learn's estimator API and pickle-free persistence.

Heads are fitted on feature vectors; :class:`facecheck.detector.pipeline.Detector` puts a
backbone in front of one. Every head stores its parameters as plain arrays (``.npz``, loaded with
``allow_pickle=False``), so a saved model cannot run code when it is loaded and scores
identically after a round trip.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch import nn

from facecheck.features.views import token_cells
from facecheck.heads.imbalance import Imbalance
from facecheck.heads.link import sigmoid
from facecheck.image.regions import REGIONS


def _check_xy(X: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"features must be 2-D (n_samples, n_features), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("features contain NaN or inf (an image failed to decode?)")
    return X, (None if y is None else _check_labels(y, len(X)))


def _check_labels(y: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.int64)
    if len(y) != n:
        raise ValueError(f"{n} feature rows but {len(y)} labels")
    if set(np.unique(y)) != {0, 1}:
        raise ValueError("labels must contain both classes: 0 (real) and 1 (fake)")
    return y


class Head(ClassifierMixin, BaseEstimator):
    """Base class: binary classifier on features, fake = 1, persisted as arrays."""

    kind: ClassVar[str] = "head"
    # Whether ``fit`` also learns from region bits (``regions=``): callers pass them then.
    learns_regions: ClassVar[bool] = False
    # What the head's rows hold (see pipeline.HEAD_INPUTS): "image" heads read any row.
    head_input: ClassVar[str] = "image"
    classes_ = np.array([0, 1])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = self._fake_probability(_check_xy(X)[0])
        return np.stack([1.0 - p, p], axis=1)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X)[:, 1]

    def predict(self, X: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= threshold).astype(np.int64)

    def _strategy(self) -> Imbalance:
        return Imbalance.parse(self.imbalance)

    def _inner_cv(self, y: np.ndarray) -> StratifiedKFold:
        """The seeded stratified folds ``C="auto"`` is picked on (at most ``self.cv``)."""
        folds = min(self.cv, int(np.bincount(y).min()))
        if folds < 2:
            raise ValueError("C='auto' needs at least 2 images of each class")
        return StratifiedKFold(folds, shuffle=True, random_state=self.seed)

    def _fit_standardiser(self, X: np.ndarray, floor: float) -> np.ndarray:
        """Learn per-feature mean and scale (scale < ``floor`` counts as 1); return X scaled."""
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0)
        self.scale_[self.scale_ < floor] = 1.0
        return (X - self.mean_) / self.scale_

    # -- persistence
    def state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _fake_probability(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def n_features_in(self) -> int:
        return int(self.n_features_in_)

    def save(self, path: str | Path) -> None:
        np.savez(path, **self.state())

    @classmethod
    def from_file(cls, kind: str, params: dict, path: str | Path) -> Head:
        params = dict(params)
        if "class_weight" in params:  # bundles written before imbalance strategies existed
            params["imbalance"] = "class_weight" if params.pop("class_weight") else "none"
        head = HEADS[kind](**params)
        with np.load(path, allow_pickle=False) as data:
            head.load_state({k: data[k] for k in data.files})
        return head


class LogisticHead(Head):
    """Standardised features -> L2-regularised logistic regression (scikit-learn's lbfgs).

    ``C="auto"`` (the default) picks the regularisation by stratified k-fold ROC-AUC on the
    *training* data: with 1,280 features and ~1,600 images an unpicked C overfits (on P1,
    5-fold ROC-AUC 0.59 at C=0.1 against 0.65 at C=0.001). C is picked on the rows as given
    (class-weighted), before any resampling, so SMOTE's synthetic neighbours of a held-out
    fake cannot leak into the folds; the final fit then uses the strategy's rows and weights.
    ``imbalance`` is a strategy from :mod:`facecheck.heads.imbalance` (not focal/balanced_batches).
    """

    kind = "logreg"
    # Large C never wins on 1,280-d features and converges slowly, so the grid stops at 0.1.
    C_GRID: ClassVar[tuple[float, ...]] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)

    def __init__(
        self,
        C: float | str = "auto",
        imbalance: str = "class_weight",
        max_iter: int = 2000,
        cv: int = 3,
        seed: int = 0,
    ):
        self.C = C
        self.imbalance = imbalance
        self.max_iter = max_iter
        self.cv = cv
        self.seed = seed

    def fit(
        self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> LogisticHead:
        """``sample_weight`` (e.g. :func:`facecheck.evaluation.groups.group_weights`)
        multiplies the class weights in the C search and the final fit."""
        X, y = _check_xy(X, y)
        strategy = self._strategy()
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
            if sample_weight.shape != y.shape or not (sample_weight > 0).all():
                raise ValueError("sample_weight needs one positive weight per row")
            if str(strategy) != "class_weight":
                raise ValueError("sample weights combine only with the class_weight strategy")
        if strategy.needs_minibatches:
            raise ValueError(f"the logistic head cannot use {strategy}: use the mlp head")
        Xs = self._fit_standardiser(X.astype(np.float64), floor=1e-12)
        if self.C == "auto":
            lr = LogisticRegressionCV(
                Cs=list(self.C_GRID),
                cv=self._inner_cv(y),
                scoring="roc_auc",
                class_weight="balanced",
                max_iter=self.max_iter,
                l1_ratios=(0.0,),  # plain L2
                use_legacy_attributes=False,
            ).fit(Xs, y, sample_weight=sample_weight)
            self.C_ = float(np.ravel(lr.C_)[0])
        else:
            self.C_ = float(self.C)
        if self.C != "auto" or str(strategy) != "class_weight":
            Xr, yr = strategy.resample(Xs, y, seed=self.seed)
            lr = LogisticRegression(
                C=self.C_,
                class_weight="balanced" if strategy.class_weight else None,
                max_iter=self.max_iter,
            ).fit(Xr, yr, sample_weight=sample_weight)
        self.coef_ = lr.coef_.ravel().astype(np.float64)
        self.intercept_ = float(lr.intercept_[0])
        self.n_features_in_ = X.shape[1]
        return self

    def _fake_probability(self, X: np.ndarray) -> np.ndarray:
        z = ((X.astype(np.float64) - self.mean_) / self.scale_) @ self.coef_ + self.intercept_
        return sigmoid(z)

    def state(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean_,
            "scale": self.scale_,
            "coef": self.coef_,
            "intercept": np.array([self.intercept_]),
            "C": np.array([self.C_]),
        }

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.mean_, self.scale_, self.coef_ = state["mean"], state["scale"], state["coef"]
        self.intercept_ = float(state["intercept"][0])
        self.C_ = float(state["C"][0])
        self.n_features_in_ = len(self.coef_)


class _MLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class MLPHead(Head):
    """Standardised features -> one hidden layer -> fake logit, class-weighted BCE.

    Trained with AdamW; early stopping on a seeded, stratified 15% slice of the training
    data (the protocol's validation split stays untouched for threshold choice). The
    ``imbalance`` strategy resamples the other 85% and sets the loss (weighted BCE or focal)
    and the batches (shuffled or class-balanced); the early-stopping slice is never resampled.
    """

    kind = "mlp"

    def __init__(
        self,
        hidden: int = 256,
        dropout: float = 0.3,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        epochs: int = 200,
        batch_size: int = 128,
        patience: int = 15,
        imbalance: str = "class_weight",
        seed: int = 0,
    ):
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.imbalance = imbalance
        self.seed = seed

    def _module(self, d_in: int) -> _MLP:
        return _MLP(d_in, self.hidden, self.dropout)

    def fit(self, X: np.ndarray, y: np.ndarray) -> MLPHead:
        X, y = _check_xy(X, y)
        torch.manual_seed(self.seed)
        Xs = self._fit_standardiser(X, floor=1e-6)
        tr, es = train_test_split(
            np.arange(len(y)), test_size=0.15, random_state=self.seed, stratify=y
        )
        strategy = self._strategy()
        Xr, yr = strategy.resample(Xs[tr], y[tr], seed=self.seed)
        xt, yt = torch.from_numpy(Xr), torch.from_numpy(yr).float()
        xe, ye = torch.from_numpy(Xs[es]), torch.from_numpy(y[es]).float()
        model = self._module(X.shape[1])
        opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        loss_fn = strategy.loss(yr)
        gen = torch.Generator().manual_seed(self.seed)
        best, best_state, bad = float("inf"), None, 0
        for _epoch in range(self.epochs):
            model.train()
            for idx in strategy.batches(yr, self.batch_size, gen):
                opt.zero_grad()
                loss_fn(model(xt[idx]), yt[idx]).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                val = float(loss_fn(model(xe), ye))
            if val < best - 1e-4:
                best, bad = val, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
                if bad >= self.patience:
                    break
        model.load_state_dict(best_state)
        self.model_ = model.eval()
        self.n_features_in_ = X.shape[1]
        self.n_epochs_ = _epoch + 1
        return self

    def _fake_probability(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            z = self.model_(torch.from_numpy((X - self.mean_) / self.scale_).float())
        return sigmoid(z.double().numpy())

    def state(self) -> dict[str, np.ndarray]:
        params = {f"w.{k}": v.numpy() for k, v in self.model_.state_dict().items()}
        return {"mean": self.mean_, "scale": self.scale_, **params}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.mean_, self.scale_ = (
            state["mean"].astype(np.float32),
            state["scale"].astype(np.float32),
        )
        self.n_features_in_ = len(self.mean_)
        model = self._module(self.n_features_in_)
        model.load_state_dict(
            {k[2:]: torch.from_numpy(v) for k, v in state.items() if k.startswith("w.")}
        )
        self.model_ = model.eval()


class _RegionMIL(nn.Module):
    """Image logit = linear(image part) + logsumexp(region logits); the region logits come
    from one linear map over every region's part (``shared``) or one per region. (No learnt
    scale on the logsumexp: it would undo the L2 penalty on the region weights.)"""

    def __init__(self, dim: int, n_regions: int, shared: bool):
        super().__init__()
        self.image = nn.Linear(dim, 1)
        self.region_w = nn.Parameter(torch.zeros(1 if shared else n_regions, dim))
        self.region_b = nn.Parameter(torch.zeros(n_regions))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zr = (x[:, 1:] * self.region_w).sum(-1) + self.region_b
        return self.image(x[:, 0]).squeeze(-1) + torch.logsumexp(zr, 1), zr

    def penalty(self) -> torch.Tensor:
        return 0.5 * (self.image.weight.square().sum() + self.region_w.square().sum())


class RegionMILHead(Head):
    """A region-aware head that also says which region was replaced (multiple-instance).

    Its input is an image part followed by the four regions' parts, equal in width (the
    pooled CLIP view with the image first). Each region gets a logit from a linear map of its
    part; the image logit adds their soft maximum (logsumexp) to a linear score of the image
    part, so one replaced region can make the image fake. ``region_weight`` > 0 also teaches
    each region's logit the region bits where they are known (``fit(..., regions=)``, NaN =
    unknown; reals of a labelled source are all 0): the file names' bits become an auxiliary
    target, and the region logits become region scores (the default weight 1: on P1, 0.962
    by CV against 0.955 with weight 0; ``benchmarks/region_mil.md``). Fitted full-batch with
    L-BFGS on the class-weighted loss plus an L2 penalty scaled as scikit-learn's (``C``,
    picked by inner stratified k-fold ROC-AUC when ``"auto"``), so C means what it means for
    the logistic head.
    """

    kind = "regionmil"
    learns_regions = True
    head_input = "image+regions"
    C_GRID: ClassVar[tuple[float, ...]] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)

    def __init__(
        self,
        C: float | str = "auto",
        region_weight: float = 1.0,
        parts: int = 5,
        shared: bool = True,
        max_iter: int = 300,
        cv: int = 3,
        seed: int = 0,
    ):
        self.C = C
        self.region_weight = region_weight
        self.parts = parts
        self.shared = shared
        self.max_iter = max_iter
        self.cv = cv
        self.seed = seed

    def _parts(self, X: np.ndarray) -> torch.Tensor:
        if X.shape[1] % self.parts:
            raise ValueError(f"{X.shape[1]} features do not split into {self.parts} equal parts")
        return torch.from_numpy(X.astype(np.float32)).view(len(X), self.parts, -1)

    def _check_regions(self, regions: np.ndarray | None, n: int) -> np.ndarray:
        if regions is None:
            return np.full((n, self.parts - 1), np.nan)
        regions = np.asarray(regions, dtype=np.float64)
        if regions.shape != (n, self.parts - 1):
            raise ValueError(f"regions must be ({n}, {self.parts - 1}), got {regions.shape}")
        known = regions[~np.isnan(regions)]
        if not np.isin(known, (0.0, 1.0)).all():
            raise ValueError("region bits must be 0, 1 or NaN (unknown)")
        return regions

    def _train(self, x: torch.Tensor, y: np.ndarray, R: np.ndarray, C: float) -> _RegionMIL:
        torch.manual_seed(self.seed)
        n = len(y)
        model = _RegionMIL(x.shape[2], self.parts - 1, self.shared)
        yt = torch.from_numpy(y).float()
        w = torch.from_numpy(n / (2.0 * np.bincount(y, minlength=2)[y])).float()
        known = torch.from_numpy(~np.isnan(R))
        rt = torch.from_numpy(np.nan_to_num(R)).float()
        # Region columns are weighted to balance replaced and untouched within each.
        pos = (rt * known).sum(0).clamp(min=1.0)
        neg = ((1 - rt) * known).sum(0).clamp(min=1.0)
        rw = known * torch.where(rt > 0, known.sum(0) / (2 * pos), known.sum(0) / (2 * neg))
        use_aux = self.region_weight > 0 and bool(known.any())
        opt = torch.optim.LBFGS(
            model.parameters(), max_iter=self.max_iter, line_search_fn="strong_wolfe"
        )
        bce = nn.functional.binary_cross_entropy_with_logits

        def closure() -> torch.Tensor:
            opt.zero_grad()
            z, zr = model(x)
            loss = bce(z, yt, weight=w) + model.penalty() / (C * n)
            if use_aux:
                aux = bce(zr, rt, weight=rw, reduction="sum") / known.sum()
                loss = loss + self.region_weight * aux
            loss.backward()
            return loss

        opt.step(closure)
        return model.eval()

    def fit(self, X: np.ndarray, y: np.ndarray, regions: np.ndarray | None = None):
        X, y = _check_xy(X, y)
        R = self._check_regions(regions, len(y))
        x = self._parts(self._fit_standardiser(X, floor=1e-6))
        if self.C == "auto":
            from sklearn.metrics import roc_auc_score

            cv = self._inner_cv(y)
            auc = {
                C: np.mean(
                    [
                        roc_auc_score(y[te], self._train(x[tr], y[tr], R[tr], C)(x[te])[0].detach())
                        for tr, te in cv.split(X, y)
                    ]
                )
                for C in self.C_GRID
            }
            self.C_ = float(max(auc, key=auc.get))
        else:
            self.C_ = float(self.C)
        self.model_ = self._train(x, y, R, self.C_)
        self.n_features_in_ = X.shape[1]
        return self

    def _logits(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            z, zr = self.model_(self._parts((X - self.mean_) / self.scale_))
        return z.double().numpy(), zr.double().numpy()

    def _fake_probability(self, X: np.ndarray) -> np.ndarray:
        return sigmoid(self._logits(X)[0])

    def predict_regions(self, X: np.ndarray) -> np.ndarray:
        """P(region replaced) for each region part, (n, parts - 1): meaningful when the head
        was fitted with ``region_weight`` > 0, else only a ranking of the regions' evidence."""
        return sigmoid(self._logits(_check_xy(X)[0])[1])

    def state(self) -> dict[str, np.ndarray]:
        params = {f"w.{k}": v.detach().numpy() for k, v in self.model_.state_dict().items()}
        return {"mean": self.mean_, "scale": self.scale_, "C": np.array([self.C_]), **params}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.mean_ = state["mean"].astype(np.float32)
        self.scale_ = state["scale"].astype(np.float32)
        self.C_ = float(state["C"][0])
        self.n_features_in_ = len(self.mean_)
        model = _RegionMIL(self.n_features_in_ // self.parts, self.parts - 1, self.shared)
        model.load_state_dict(
            {k[2:]: torch.from_numpy(v) for k, v in state.items() if k.startswith("w.")}
        )
        self.model_ = model.eval()


class _TokenAttention(nn.Module):
    """Gated attention pooling (Ilse, Tomczak & Welling 2018) of projected patch tokens,
    plus a linear score of the class token; also each region's logit from the projected
    tokens averaged with its box weights."""

    def __init__(self, dim: int, hidden: int, dropout: float, in_boxes: bool = False):
        super().__init__()
        self.in_boxes = in_boxes  # attend only to cells under a region box
        self.project = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout))
        self.attend_v = nn.Linear(hidden, hidden)
        self.attend_u = nn.Linear(hidden, hidden)
        self.attend_w = nn.Linear(hidden, 1)
        self.image = nn.Linear(hidden, 1)
        self.cls = nn.Linear(dim, 1)
        self.region = nn.Linear(hidden, 1)

    def forward(
        self, patches: torch.Tensor, cls: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.project(patches)  # (n, cells, hidden)
        a = self.attend_w(torch.tanh(self.attend_v(h)) * torch.sigmoid(self.attend_u(h)))
        if self.in_boxes:  # every picture has cells under its boxes (weights sum to 1)
            a = a.masked_fill(weights.sum(1, keepdim=True).transpose(1, 2) <= 0, -torch.inf)
        pooled = (torch.softmax(a, dim=1) * h).sum(1)
        image = self.image(pooled)[:, 0] + self.cls(cls)[:, 0]
        regions = self.region(torch.einsum("nrt,nth->nrh", weights, h))[..., 0]
        return image, regions


class TokenMILHead(Head):
    """Attention over every patch token, fused with :class:`RegionMILHead` on the pooled
    regions: P(fake) is the sigmoid of the mean of the two logits (a fixed rule).

    Its rows are :class:`facecheck.features.views.TokenView`'s: the class token and the four
    regions pooled (what ``regionmil`` reads), every cell of the map, and the regions' box
    weights. A pasted eye leaves its seam in a few of the 196 tokens, which a box average
    dilutes; here each token is standardised (per channel, over 256 training images),
    projected to ``hidden`` channels, and pooled by gated attention, so the pooled vector
    can be one token's. With ``region_weight`` > 0 each region's logit (the projected
    tokens under its box) is also taught the region bits where known, telling the
    projection where seams are. Trained with AdamW on the class-weighted binary
    cross-entropy for a fixed number of epochs (nothing is held out to stop on). On P1 by
    5-fold CV: 0.967 +/- 0.006 against the logistic head's 0.956
    (``benchmarks/token_mil.md``); trained on protocol ALL it gains on the same source
    but does worse on sources it never saw (P7; ``benchmarks/token_all.md``), so it is not
    the shipped head. ``attend="boxes"`` keeps the attention on the cells under the region
    boxes (less of that loss, ``token_boxes.md``); ``fuse`` False leaves the token
    attention's logit alone (no region-MIL head). Rows stay float16 until a batch is
    scored, so a training set of 10,000 images needs ~3 GB, not 6.
    """

    kind = "tokenmil"
    learns_regions = True
    head_input = "tokens"

    def __init__(
        self,
        dim: int = 768,
        hidden: int = 64,
        dropout: float = 0.2,
        epochs: int = 30,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 64,
        region_weight: float = 1.0,
        C: float | str = "auto",
        fuse: bool = True,
        attend: str = "all",
        seed: int = 0,
    ):
        self.dim = dim
        self.hidden = hidden
        self.dropout = dropout
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.region_weight = region_weight
        self.C = C  # the RegionMILHead's
        self.fuse = fuse  # False: the token attention's logit alone (no RegionMILHead)
        # "boxes": attention only over the cells under the four region boxes, so the head
        # cannot read hair, background or framing (a real source's look; token_all.md).
        self.attend = attend
        self.seed = seed

    def _net(self) -> _TokenAttention:
        if self.attend not in ("all", "boxes"):
            raise ValueError(f"attend must be all or boxes, not {self.attend!r}")
        return _TokenAttention(self.dim, self.hidden, self.dropout, self.attend == "boxes")

    def _mil(self) -> RegionMILHead:
        return RegionMILHead(C=self.C, region_weight=self.region_weight, seed=self.seed)

    def _split(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A row's parts: class token + pooled regions, patch tokens, box weights."""
        cells = token_cells(X.shape[1], self.dim)
        n, head = len(X), self.dim * (1 + len(REGIONS))
        tokens = X[:, head : head + cells * self.dim].reshape(n, cells, self.dim)
        weights = X[:, head + cells * self.dim :].reshape(n, len(REGIONS), cells)
        return X[:, :head], X[:, : self.dim], tokens, weights

    def _tensors(
        self, X: np.ndarray, rows: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _, cls, tokens, weights = self._split(X[rows])
        p = (torch.from_numpy(tokens.astype(np.float32)) - self.mu_) / self.sd_
        c = (torch.from_numpy(cls.astype(np.float32)) - self.mu_cls_) / self.sd_cls_
        return p, c, torch.from_numpy(weights.astype(np.float32))

    @staticmethod
    def _check_rows(X: np.ndarray) -> np.ndarray:
        # Not _check_xy: a float32 copy of every token would double the memory.
        X = np.asarray(X)
        if X.ndim != 2 or X.dtype.kind != "f":
            raise ValueError(f"token rows must be 2-D floats, got {X.dtype} {X.shape}")
        for b in range(0, len(X), 256):
            if not np.isfinite(X[b : b + 256]).all():
                raise ValueError("features contain NaN or inf (an image failed to decode?)")
        return X

    def fit(self, X: np.ndarray, y: np.ndarray, regions: np.ndarray | None = None):
        X = self._check_rows(X)
        pooled, cls, tokens, _ = self._split(X)
        self.mil_ = self._mil()
        if self.fuse:
            self.mil_.fit(pooled.astype(np.float32), y, regions)
        y = _check_labels(y, len(X))
        R = self.mil_._check_regions(regions, len(y))
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        sample = tokens[rng.permutation(len(X))[:256]].astype(np.float32).reshape(-1, self.dim)
        self.mu_ = torch.from_numpy(sample.mean(0))
        self.sd_ = torch.from_numpy(sample.std(0) + 1e-3)
        c = cls.astype(np.float32)
        self.mu_cls_, self.sd_cls_ = torch.from_numpy(c.mean(0)), torch.from_numpy(c.std(0) + 1e-3)
        net = self._net()
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        pos_weight = torch.tensor((y == 0).sum() / max((y == 1).sum(), 1), dtype=torch.float32)
        bce = nn.functional.binary_cross_entropy_with_logits
        net.train()
        for _ in range(self.epochs):
            for b in np.array_split(rng.permutation(len(X)), max(1, len(X) // self.batch_size)):
                image, reg = net(*self._tensors(X, b))
                loss = bce(image, torch.from_numpy(y[b]).float(), pos_weight=pos_weight)
                r = torch.from_numpy(R[b]).float()
                known = ~torch.isnan(r)
                if self.region_weight and known.any():
                    loss = loss + self.region_weight * bce(reg[known], r[known])
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.net_ = net.eval()
        self.n_features_in_ = X.shape[1]
        return self

    def _logits(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fused image logit (n,) and the token regions' logits (n, 4)."""
        z, zr = [], []
        with torch.inference_mode():
            for b in np.array_split(np.arange(len(X)), max(1, len(X) // 128)):
                image, reg = self.net_(*self._tensors(X, b))
                z.append(image.double().numpy())
                zr.append(reg.double().numpy())
        z = np.concatenate(z)
        if self.fuse:
            z = (z + self.mil_._logits(self._split(X)[0].astype(np.float32))[0]) / 2
        return z, np.concatenate(zr)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = sigmoid(self._logits(self._check_rows(X))[0])
        return np.stack([1.0 - p, p], axis=1)

    def predict_regions(self, X: np.ndarray) -> np.ndarray:
        """P(region replaced) from the token attention's region logits, (n, 4)."""
        return sigmoid(self._logits(self._check_rows(X))[1])

    def cell_logits(self, cells: np.ndarray) -> np.ndarray:
        """Each map cell (n, dim) scored by the region branch as if it were a region alone:
        a heatmap where no region scores were trained."""
        with torch.inference_mode():
            x = (torch.from_numpy(np.asarray(cells, np.float32)) - self.mu_) / self.sd_
            return self.net_.region(self.net_.project(x))[:, 0].double().numpy()

    def state(self) -> dict[str, np.ndarray]:
        net = {f"w.{k}": v.detach().numpy() for k, v in self.net_.state_dict().items()}
        mil = {f"mil.{k}": v for k, v in self.mil_.state().items()} if self.fuse else {}
        stats = {"mu": self.mu_, "sd": self.sd_, "mu_cls": self.mu_cls_, "sd_cls": self.sd_cls_}
        return {
            **{k: v.numpy() for k, v in stats.items()},
            "n_features": np.array([self.n_features_in_]),
            **net,
            **mil,
        }

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.mu_, self.sd_ = torch.from_numpy(state["mu"]), torch.from_numpy(state["sd"])
        self.mu_cls_ = torch.from_numpy(state["mu_cls"])
        self.sd_cls_ = torch.from_numpy(state["sd_cls"])
        self.n_features_in_ = int(state["n_features"][0])
        net = self._net()
        net.load_state_dict(
            {k[2:]: torch.from_numpy(v) for k, v in state.items() if k.startswith("w.")}
        )
        self.net_ = net.eval()
        self.mil_ = self._mil()
        if self.fuse:
            self.mil_.load_state({k[4:]: v for k, v in state.items() if k.startswith("mil.")})


HEADS: dict[str, type[Head]] = {
    "logreg": LogisticHead,
    "mlp": MLPHead,
    "regionmil": RegionMILHead,
    "tokenmil": TokenMILHead,
}


def split_head_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"mlp:smote+focal"`` -> ``("mlp", {"imbalance": "smote+focal"})``; plain kinds pass."""
    kind, _, strategy = spec.partition(":")
    if kind not in HEADS:
        raise KeyError(f"unknown head {kind!r}; choose from {', '.join(HEADS)}")
    return kind, ({"imbalance": str(Imbalance.parse(strategy))} if strategy else {})


def fit_head(
    head: Head,
    X: np.ndarray,
    y: np.ndarray,
    regions: np.ndarray | None,
    sample_weight: np.ndarray | None = None,
) -> Head:
    """``head.fit(X, y)``, with the region bits for a head that learns from them and the
    sample weights for the one that takes them (the logistic head)."""
    if sample_weight is not None:
        if not isinstance(head, LogisticHead):
            raise ValueError(f"the {head.kind} head takes no sample weights: use logreg")
        return head.fit(X, y, sample_weight=sample_weight)
    return head.fit(X, y, regions=regions) if head.learns_regions else head.fit(X, y)


def make_head(spec: str, **params) -> Head:
    """A head from ``kind`` or ``kind:imbalance-strategy``; ``params`` override the spec's."""
    kind, from_spec = split_head_spec(spec)
    return HEADS[kind](**{**from_spec, **params})
