"""Ensembles over members' fake scores: stacking, and the thesis's human-review vote.

Members are any fitted detectors; an ensemble sees only their scores, one column per member
(``S`` of shape ``(n_images, n_members)``), so members may use different backbones, heads,
imbalance strategies or fine-tuned networks. Everything an ensemble learns, it learns from
the members' *validation* outputs; the test split is scored once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from facecheck.decision.policy import DEPLOYED_FAKE_RATE, Policy
from facecheck.decision.review import FAKE, REAL, REVIEW, review_metrics
from facecheck.heads.link import logit


def _scores(S: np.ndarray) -> np.ndarray:
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2:
        raise ValueError(f"member scores must be 2-D (n_images, n_members), got {S.shape}")
    return S


class StackingClassifier(ClassifierMixin, BaseEstimator):
    """Logistic regression on the members' logits, fitted on validation outputs.

    The thesis's "ensemble model" (a dense layer over four ConvNeXts' outputs) in its
    simplest honest form. Because it is fitted on validation, it also keeps
    ``oof_scores_``: its own out-of-fold scores on those images (k-fold), which is what its
    threshold, or a vote it sits in, may be chosen from without scoring its training rows.
    """

    classes_ = np.array([0, 1])

    def __init__(self, C: float = 1.0, folds: int = 5, seed: int = 0):
        self.C = C
        self.folds = folds
        self.seed = seed

    def _lr(self) -> LogisticRegression:
        return LogisticRegression(C=self.C, class_weight="balanced", max_iter=1000)

    def fit(self, S: np.ndarray, y: np.ndarray) -> StackingClassifier:
        Z, y = logit(_scores(S), eps=1e-6), np.asarray(y, dtype=np.int64)
        folds = min(self.folds, int(np.bincount(y, minlength=2).min()))
        if folds < 2:
            raise ValueError("stacking needs at least 2 images of each class")
        cv = StratifiedKFold(folds, shuffle=True, random_state=self.seed)
        self.oof_scores_ = cross_val_predict(self._lr(), Z, y, cv=cv, method="predict_proba")[:, 1]
        self.lr_ = self._lr().fit(Z, y)
        self.n_features_in_ = S.shape[1]
        return self

    def predict_proba(self, S: np.ndarray) -> np.ndarray:
        return self.lr_.predict_proba(logit(_scores(S), eps=1e-6))

    @property
    def weights(self) -> np.ndarray:
        return self.lr_.coef_.ravel()


class VotingClassifier:
    """N members vote fake/real at their own thresholds; the verdict is three-way.

    ``rule="unanimous"`` (the thesis's deployed rule): all fake -> automatic fake, all real
    -> automatic real, any disagreement -> a person. ``rule="any"`` (the thesis's validation
    variant): one fake vote is enough for fake, so nothing is left to a person.
    """

    def __init__(
        self,
        thresholds: Sequence[float] | None = None,
        *,
        rule: str = "unanimous",
        names: Sequence[str] | None = None,
    ):
        if rule not in ("unanimous", "any"):
            raise ValueError(f"unknown voting rule {rule!r}: use unanimous or any")
        self.thresholds = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        self.rule = rule
        self.names = list(names) if names else None

    def votes(self, S: np.ndarray) -> np.ndarray:
        S = _scores(S)
        if self.thresholds is None:
            raise RuntimeError("set the members' thresholds first (fit_thresholds or __init__)")
        if S.shape[1] != len(self.thresholds):
            raise ValueError(f"{S.shape[1]} member columns but {len(self.thresholds)} thresholds")
        return self.thresholds <= S

    def decide(self, S: np.ndarray) -> np.ndarray:
        """FAKE (1), REAL (0) or REVIEW (-1) per image."""
        k = self.votes(S).sum(axis=1)
        if self.rule == "any":
            return np.where(k > 0, FAKE, REAL)
        return np.where(k == len(self.thresholds), FAKE, np.where(k == 0, REAL, REVIEW))

    def fit_thresholds(
        self, S: np.ndarray, y: np.ndarray, policy: str = "youden"
    ) -> VotingClassifier:
        """Each member's threshold by the same validation policy (e.g. youden, recall:0.9)."""
        p = Policy.parse(policy)
        S = _scores(S)
        self.thresholds = np.array([p.threshold(y, S[:, j]) for j in range(S.shape[1])])
        return self

    def fit_target_recall(
        self,
        S: np.ndarray,
        y: np.ndarray,
        target: float,
        levels: Sequence[float] = tuple(np.round(np.arange(0.50, 1.0001, 0.01), 2)),
    ) -> VotingClassifier:
        """The policy for a vote: reach ``target`` caught fakes on validation, least work.

        Every member is set to the same validation recall level r (its ``recall:r``
        threshold); the r kept is the one whose vote catches at least ``target`` of the
        validation fakes (flagged or sent to a person) with the smallest share of images
        flagged or reviewed at the deployed fake rate. If no level reaches the target, the
        one catching the most is kept and ``target_reached_`` is False.
        """
        S, y = _scores(S), np.asarray(y)
        best: tuple[tuple[float, float], np.ndarray, bool] | None = None
        for r in levels:
            self.fit_thresholds(S, y, f"recall:{r}")
            d = self.decide(S)
            m = review_metrics(y, d)
            work = m["review_per_10k"] + 10_000 * _auto_fake_rate(y, d)
            ok = m["caught"] >= target - 1e-12
            key = (0.0, work) if ok else (1.0, -m["caught"])
            if best is None or key < best[0]:
                best = (key, self.thresholds.copy(), ok)
        self.thresholds, self.target_reached_ = best[1], best[2]
        self.target_ = target
        return self


def _auto_fake_rate(y: np.ndarray, decision: np.ndarray) -> float:
    """Automatic fake verdicts on reals, at the deployed rate (they cost a customer too)."""
    reals = np.asarray(y) == 0
    return (1 - DEPLOYED_FAKE_RATE) * float((decision[reals] == FAKE).mean())
