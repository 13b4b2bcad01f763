"""Fine-tuning: a reusable training loop and a detector with scikit-learn's API.

:class:`FineTuner` trains a :mod:`facecheck.backbones.networks` network end to end:

- images are decoded by :mod:`facecheck.image.decode` (so the same bad-input rules hold) and
  held in memory as uint8 at the network's input size;
- the imbalance strategy (:mod:`facecheck.heads.imbalance`) resamples the training images (SMOTE
  on raw pixels, as the thesis did, or undersampling), sets the loss (weighted BCE or
  focal) and the batches (shuffled or class-balanced);
- augmentation (:mod:`facecheck.training.augment`) runs on training batches only;
- each epoch logs train loss, validation loss, ROC-AUC, recall and precision at 0.5, with a
  tqdm bar; training stops early when the validation loss has not improved for
  ``patience`` epochs, and the best epoch's weights are kept;
- with ``checkpoint_dir``, ``last.pt`` (weights, optimiser, history, RNG state) is written
  every epoch and ``best.pt`` whenever validation loss improves; ``resume=True`` continues
  from ``last.pt``. Runs are seeded; CUDA is used when there is one.

The validation split drives early stopping here, so thresholds chosen on it afterwards are
slightly optimistic; the test split is still scored once.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from facecheck.backbones.networks import NETWORKS, build_network
from facecheck.decision.policy import choose_threshold
from facecheck.heads.imbalance import Imbalance
from facecheck.heads.link import sigmoid
from facecheck.image.decode import DecodedImage, ImageError, load_image
from facecheck.training import augment

CHECKPOINT_FORMAT = "facecheck.finetuned"


@dataclass
class TrainConfig:
    """Everything that defines a fine-tuning run (saved with every checkpoint)."""

    network: str = "baseline_cnn"
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adamw"  # or "sgd": the thesis's SGD, lr 0.05, momentum 0.9
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    patience: int = 4
    imbalance: str = "class_weight"
    augment: str = augment.DEFAULT
    seed: int = 0
    weights: str | None = None  # a local starting point instead of the default
    # Weight of the auxiliary region loss (networks with ``region_logits``, given region
    # targets): each region crop's logit is also taught whether that region was replaced.
    region_weight: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)


def region_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the known region targets (NaN = unknown: a GAN face, a self-blended
    fake, an unlabelled source); zero, with a gradient, when none is known."""
    known = ~torch.isnan(targets)
    if not bool(known.any()):
        return logits.sum() * 0.0
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[known], targets[known])


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_pixels(
    sources: Sequence[str | Path | bytes | DecodedImage], size_of, *, progress: bool = False
) -> tuple[np.ndarray, dict[int, ImageError]]:
    """uint8 (N, 3, S, S) pictures via the hardened decoder; unreadable ones listed apart."""
    out = np.zeros((len(sources), 3, size_of.size, size_of.size), np.uint8)
    errors: dict[int, ImageError] = {}
    for i, src in enumerate(tqdm(sources, desc="decode", unit="img", disable=not progress)):
        try:
            img = src.image if isinstance(src, DecodedImage) else load_image(src).image
            out[i] = size_of.pixels(img)
        except ImageError as exc:
            errors[i] = exc
    return out, errors


class FineTuner:
    """A network fine-tuned on images: ``fit``, ``predict_proba``, ``save``, ``load``."""

    classes_ = np.array([0, 1])

    def __init__(self, config: TrainConfig | None = None, *, device: str = "auto", **overrides):
        self.config = dataclasses.replace(config or TrainConfig(), **overrides)
        if self.config.network not in NETWORKS:
            raise KeyError(f"unknown network {self.config.network!r}; choose from {list(NETWORKS)}")
        self.preprocessing = NETWORKS[self.config.network].preprocessing
        self.device = pick_device(device)
        self.history: list[dict[str, float]] = []
        self.net: torch.nn.Module | None = None
        self.threshold, self.threshold_rule = 0.5, "default"

    # -- training
    def _optimizer(self, net: torch.nn.Module) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "sgd":
            return torch.optim.SGD(
                net.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
            )
        if c.optimizer == "adamw":
            return torch.optim.AdamW(net.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        raise ValueError(f"unknown optimizer {c.optimizer!r}: use adamw or sgd")

    def _pixels(self, X, progress: bool) -> np.ndarray:
        if isinstance(X, np.ndarray) and X.dtype == np.uint8 and X.ndim in (4, 5):
            return X  # pictures (N, 3, S, S), or region crops (N, R, 3, S, S)
        px, errors = load_pixels(X, self.preprocessing, progress=progress)
        if errors:
            i, err = next(iter(sorted(errors.items())))
            raise ImageError(f"{len(errors)} image(s) could not be read; first (#{i}): {err}")
        return px

    def fit(
        self,
        X: Sequence | np.ndarray,
        y: Sequence[int],
        X_val: Sequence | np.ndarray,
        y_val: Sequence[int],
        *,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
        synthetic: Callable[[int, np.random.Generator], np.ndarray] | None = None,
        n_synthetic: int = 0,
        regions: np.ndarray | None = None,
    ) -> FineTuner:
        """Train on (X, y), early-stop on (X_val, y_val). X: paths, bytes or uint8 pixels.

        ``synthetic(n, rng)`` (e.g. :class:`facecheck.training.blend.SyntheticFakes`) adds ``n``
        fresh fakes, uint8 channels-last ((n, S, S, 3), or (n, R, S, S, 3) for region
        crops), to every epoch's training data; each epoch's draw
        is seeded by (seed, epoch), so a resumed run sees the same fakes.
        ``regions`` (n, R): whether each region of each training image was replaced (1/0,
        NaN where unknown, e.g. from :func:`facecheck.detector.localise.region_targets`); with
        ``config.region_weight`` > 0 and a region network on region crops, they are an
        auxiliary target of the region logits (early stopping still reads the image loss).
        """
        c = self.config
        torch.manual_seed(c.seed)  # weights init and augmentation draws
        strategy = Imbalance.parse(c.imbalance)
        px, y = self._pixels(X, progress), np.asarray(y, dtype=np.int64)
        pv, yv = self._pixels(X_val, progress), np.asarray(y_val, dtype=np.int64)
        aux = regions is not None and c.region_weight > 0
        if aux:
            regions = np.asarray(regions, dtype=np.float32)
            if regions.shape != (len(y), *px.shape[1:2]) or px.ndim != 5:
                raise ValueError("region targets need region crops (N, R, 3, S, S) and (N, R) bits")
            if strategy.smote is not None or strategy.under is not None:
                raise ValueError("region targets need an imbalance strategy that keeps the rows")
        px, y = strategy.resample(px, y, seed=c.seed)  # SMOTE on raw pixels, or undersampling
        self.train_counts_ = {"real": int((y == 0).sum()), "fake": int((y == 1).sum())}
        pipeline = augment.build(c.augment, self.preprocessing.size)
        net = build_network(c.network, c.weights).to(self.device)
        if aux and not (hasattr(net, "region_logits") and hasattr(net, "pool")):
            raise ValueError(f"{c.network} has no region logits for region targets")
        opt = self._optimizer(net)
        n_syn = n_synthetic if synthetic is not None else 0
        loss_fn = strategy.loss(np.concatenate([y, np.ones(n_syn, np.int64)])).to(self.device)
        gen = torch.Generator().manual_seed(c.seed)
        start, best, best_state, bad = 0, math.inf, None, 0
        ckpt = Path(checkpoint_dir) if checkpoint_dir else None
        if ckpt:
            ckpt.mkdir(parents=True, exist_ok=True)
        if resume and ckpt and (ckpt / "last.pt").is_file():
            state = torch.load(ckpt / "last.pt", map_location=self.device, weights_only=False)
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            self.history = state["history"]
            start, best, bad = state["epoch"] + 1, state["best"], state["bad"]
            best_state = torch.load(ckpt / "best.pt", map_location="cpu", weights_only=True)[
                "model"
            ]
        for epoch in range(start, c.epochs):
            if bad >= c.patience:
                break
            t0 = time.perf_counter()
            net.train()
            px_e, y_e, r_e = px, y, regions
            if n_syn:
                extra = synthetic(n_syn, np.random.default_rng([c.seed, epoch]))  # type: ignore[misc]
                px_e = np.concatenate([px, np.moveaxis(extra, -1, -3)])
                y_e = np.concatenate([y, np.ones(n_syn, np.int64)])
                if aux:  # the synthetic fakes' regions are not recorded here: unknown
                    r_e = np.concatenate([regions, np.full((n_syn, regions.shape[1]), np.nan)])  # type: ignore[union-attr]
            batches = strategy.batches(y_e, c.batch_size, gen)
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{c.epochs}", disable=not progress)
            total, seen, total_r = 0.0, 0, 0.0
            for idx in bar:
                if len(idx) < 2 and any(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules()):
                    continue  # BatchNorm cannot train on a single row
                xb = augment.apply(pipeline, torch.from_numpy(px_e[idx.numpy()]))
                xb = self.preprocessing.normalize(xb).to(self.device)
                yb = torch.from_numpy(y_e[idx.numpy()]).float().to(self.device)
                opt.zero_grad()
                if aux:  # one pass: the image logit is pooled from the region logits
                    rl = net.region_logits(xb)  # type: ignore[operator]
                    rb = torch.from_numpy(r_e[idx.numpy()]).float().to(self.device)  # type: ignore[index]
                    r_loss = region_loss(rl, rb)
                    loss = loss_fn(net.pool(rl), yb) + c.region_weight * r_loss  # type: ignore[operator]
                    total_r += r_loss.item() * len(idx)
                else:
                    loss = loss_fn(net(xb), yb)
                loss.backward()
                opt.step()
                total, seen = total + loss.item() * len(idx), seen + len(idx)
                bar.set_postfix(loss=f"{total / max(seen, 1):.4f}")
            logits = self._logits(net, pv)
            # On the loss's device: its class weights live there (CUDA runs).
            val_loss = float(
                loss_fn(
                    torch.from_numpy(logits).float().to(self.device),
                    torch.from_numpy(yv).float().to(self.device),
                )
            )
            p = sigmoid(logits)
            pred = p >= 0.5
            row = {
                "epoch": epoch + 1,
                "train_loss": total / max(seen, 1),
                **({"train_region_loss": total_r / max(seen, 1)} if aux else {}),
                "val_loss": val_loss,
                "val_roc_auc": float(roc_auc_score(yv, p)) if len(set(yv)) == 2 else math.nan,
                "val_recall": float(pred[yv == 1].mean()) if (yv == 1).any() else math.nan,
                "val_precision": float(yv[pred].mean()) if pred.any() else math.nan,
                "seconds": time.perf_counter() - t0,
            }
            self.history.append(row)
            if progress:
                tqdm.write(
                    "  ".join(
                        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in row.items()
                    )
                )
            if val_loss < best - 1e-5:
                best, bad = val_loss, 0
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                if ckpt:
                    torch.save({"model": best_state}, ckpt / "best.pt")
            else:
                bad += 1
            if ckpt:
                torch.save(
                    {
                        "model": net.state_dict(),
                        "optimizer": opt.state_dict(),
                        "generator": gen.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "history": self.history,
                        "epoch": epoch,
                        "best": best,
                        "bad": bad,
                    },
                    ckpt / "last.pt",
                )
        if best_state is not None:
            net.load_state_dict(best_state)
        self.net = net.eval()
        self.best_epoch_ = (
            min(self.history, key=lambda r: r["val_loss"])["epoch"] if self.history else 0
        )
        return self

    @torch.no_grad()
    def _logits(self, net: torch.nn.Module, px: np.ndarray, batch: int = 64) -> np.ndarray:
        net.eval()
        out = []
        for i in range(0, len(px), batch):
            xb = self.preprocessing.normalize(torch.from_numpy(px[i : i + batch]))
            out.append(net(xb.to(self.device)).float().cpu())
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)

    # -- inference
    def predict_proba(self, X: Sequence | np.ndarray, *, progress: bool = False) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("fit or load the network first")
        p = sigmoid(self._logits(self.net, self._pixels(X, progress)))
        return np.stack([1 - p, p], axis=1)

    def set_threshold_from(
        self,
        y_val: Sequence[int],
        score_val: np.ndarray,
        rule: str,
        groups: Sequence[str] | np.ndarray | None = None,
    ) -> float:
        """The operating threshold from *validation* scores (see metrics.choose_threshold)."""

        y, s = np.asarray(y_val), np.asarray(score_val)
        self.threshold = choose_threshold(y, s, rule, groups=groups)
        self.threshold_rule = rule
        return self.threshold

    # -- persistence
    def save(self, path: str | Path) -> Path:
        """One file: config, weights (tensors only) and the training history."""
        if self.net is None:
            raise RuntimeError("nothing to save: fit first")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "config": asdict(self.config),
                "model": {k: v.cpu() for k, v in self.net.state_dict().items()},
                "history": self.history,
                "threshold": self.threshold,
                "threshold_rule": self.threshold_rule,
            },
            path,
        )
        return path

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto") -> FineTuner:
        # weights_only: a checkpoint can hold tensors and plain values, never code.
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a facecheck fine-tuned checkpoint")
        config = TrainConfig(**state["config"])
        self = cls(config, device=device)
        net = build_network(config.network, pretrained=False)  # weights come next
        net.load_state_dict(state["model"])
        self.net = net.to(self.device).eval()
        self.history = state["history"]
        self.threshold, self.threshold_rule = state["threshold"], state["threshold_rule"]
        return self
