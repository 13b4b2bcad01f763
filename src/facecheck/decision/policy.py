"""Operating-point policy and calibration, both fitted on validation outputs only.

Neither seed has a policy: the thesis takes its networks' argmax. A bank asks one of two
questions instead, and each is answered on the validation split, then reported on test:

- ``target_recall``: catch at least this share of fakes, sending as few images as possible
  to a person (:func:`threshold_for_recall`);
- ``review_budget``: a person can look at this share of applications; catch as many fakes as
  fit (:func:`threshold_for_budget`). The share is taken at a stated fake rate (1:1000 for the
  bank), not at the validation split's own ratio, which is far richer in fakes.

A third, ``fpr``, is fitted on the validation *reals* alone (:func:`threshold_for_fpr`): flag
at most this share of genuine photos, of each real source. It is the one that transfers: a
threshold tuned to the known fakes' scores sits wherever those fakes happen to score (near 1
for a generator seen in training, so an unseen generator's fakes fall under it; P7), and a
threshold tuned on a mix of real sources sits where the largest source puts it (the shipped
detector's ALL threshold flagged 48% of rff-like photos). The reals of a deployment are
plentiful and their false-alarm rate is what a bank pays for; recall follows from the ranking.

:class:`facecheck.decision.calibration.Calibrator` maps scores to probabilities
(temperature scaling or isotonic regression on validation), with an optional prior shift to
the deployed fake rate, so a score of 0.3 means about a 30% chance the image is fake at
that rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

# A bank's fake rate: one application in a thousand.
DEPLOYED_FAKE_RATE = 1 / 1000


@dataclass(frozen=True)
class ThresholdRule:
    """A way to pick the operating threshold on validation outputs.

    ``fit(y, score, value, groups)``: ``value`` is the rule's parameter (``fpr:0.1`` ->
    0.1; None for a rule that takes none), ``groups`` each image's group (real source)
    for rules that hold every group to a rate."""

    name: str
    fit: Callable[[np.ndarray, np.ndarray, float | None, np.ndarray | None], float]
    takes_value: bool
    summary: str


# One registry: a new rule is one decorated function here, and every command that takes
# --threshold-rule (train, evaluate, calibrate, finetune) and the bundle know it.
THRESHOLD_RULES: dict[str, ThresholdRule] = {}


def threshold_rule(name: str, *, takes_value: bool, summary: str):
    """Register ``fn(y, score, value, groups) -> threshold`` as the rule ``name``."""

    def register(fn):
        THRESHOLD_RULES[name] = ThresholdRule(name, fn, takes_value, summary)
        return fn

    return register


def rules_help() -> str:
    """The registered rules, for error messages and --help."""
    return ", ".join(f"{r.name}:<x>" if r.takes_value else r.name for r in THRESHOLD_RULES.values())


def choose_threshold(
    y: np.ndarray, score: np.ndarray, rule: str = "youden", groups: np.ndarray | None = None
) -> float:
    """Pick a threshold on *validation* outputs by a registered rule (``THRESHOLD_RULES``):
    ``youden``, ``f1``, ``recall:0.95``, ``budget:0.015``, ``fpr:0.05`` (per group in
    ``groups``, e.g. each real source), or any rule registered with :func:`threshold_rule`.
    """
    y = np.asarray(y, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    policy = Policy.parse(rule)
    if policy.kind != "fpr" and len(np.unique(y)) < 2:
        raise ValueError("choosing a threshold needs both classes in the validation split")
    return policy.threshold(y, score, groups)


@threshold_rule("youden", takes_value=False, summary="max recall - FPR")
def _youden(y, score, _value, _groups) -> float:
    fpr, tpr, thr = roc_curve(y, score)
    best = int(np.argmax(tpr - fpr))
    return float(min(thr[best], 1.0))


@threshold_rule("f1", takes_value=False, summary="max F1")
def _f1(y, score, _value, _groups) -> float:
    prec, rec, thr = precision_recall_curve(y, score)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    return float(thr[int(np.argmax(f1[:-1]))])


def _checked(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, score = np.asarray(y, dtype=np.int64), np.asarray(score, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError("an operating point needs both classes in the validation outputs")
    return y, score


def threshold_for_recall(y: np.ndarray, score: np.ndarray, target: float) -> float:
    """The highest threshold whose validation recall reaches ``target`` (fewest flags that do)."""
    if not 0 < target <= 1:
        raise ValueError(f"target recall must be in (0, 1], got {target}")
    y, score = _checked(y, score)
    _fpr, tpr, thr = roc_curve(y, score)
    return float(min(thr[np.flatnonzero(tpr >= target - 1e-12)[0]], 1.0))


def flagged_share(
    y: np.ndarray, score: np.ndarray, threshold: float, fake_rate: float | None = None
) -> float:
    """Share of images at or above ``threshold``, at ``fake_rate`` (default: as in ``y``)."""
    y, score = _checked(y, score)
    flagged = score >= threshold
    if fake_rate is None:
        return float(flagged.mean())
    return float(fake_rate * flagged[y == 1].mean() + (1 - fake_rate) * flagged[y == 0].mean())


def threshold_for_budget(
    y: np.ndarray,
    score: np.ndarray,
    budget: float,
    fake_rate: float | None = DEPLOYED_FAKE_RATE,
) -> float:
    """The lowest threshold (best recall) whose flagged share at ``fake_rate`` fits ``budget``."""
    if not 0 <= budget <= 1:
        raise ValueError(f"review budget must be in [0, 1], got {budget}")
    y, score = _checked(y, score)
    fpr, tpr, thr = roc_curve(y, score)
    pi = float(y.mean()) if fake_rate is None else fake_rate
    share = pi * tpr + (1 - pi) * fpr
    ok = np.flatnonzero(share <= budget + 1e-12)  # share grows along roc_curve's thresholds
    return float(min(thr[ok[-1]], 1.0 + 1e-9)) if ok.size else float("inf")


# Scores are probabilities computed in float32 (bf16 on some CPUs): a threshold a hair above
# a validation score must not flag that picture when it is scored again.
_MARGIN = 1e-6


def threshold_for_fpr(
    y: np.ndarray, score: np.ndarray, target: float, groups: np.ndarray | None = None
) -> float:
    """The lowest threshold that flags at most ``target`` of the reals (y == 0), of every
    group (e.g. real source) when ``groups`` is given: the highest of the groups' thresholds.
    Fakes play no part."""
    if not 0 <= target <= 1:
        raise ValueError(f"target false-positive rate must be in [0, 1], got {target}")
    y, score = np.asarray(y, dtype=np.int64), np.asarray(score, dtype=np.float64)
    reals = y == 0
    if not reals.any():
        raise ValueError("a false-positive-rate threshold needs reals in the validation outputs")
    groups = np.zeros(len(y), int) if groups is None else np.asarray(groups)
    best = -np.inf
    for g in np.unique(groups[reals]):
        s = np.sort(score[reals & (groups == g)])[::-1]  # highest first
        allowed = int(np.floor(target * len(s) + 1e-9))  # reals that may score above
        if allowed < len(s):
            # Just above the first real that must not be flagged (scores >= t are flagged),
            # by a margin that absorbs float32 rounding when the same picture is scored
            # again, but never past the next real's score.
            above = s[allowed] + _MARGIN
            if allowed > 0:
                above = min(above, (s[allowed] + s[allowed - 1]) / 2)
            best = max(best, float(max(above, np.nextafter(s[allowed], np.inf))))
    return best if np.isfinite(best) else 0.0


threshold_rule("recall", takes_value=True, summary="fewest flags catching this share")(
    lambda y, score, value, _groups: threshold_for_recall(y, score, float(value))
)
threshold_rule("budget", takes_value=True, summary="best recall flagging this share at 1:1000")(
    lambda y, score, value, _groups: threshold_for_budget(y, score, float(value))
)
threshold_rule("fpr", takes_value=True, summary="at most this share of each group's reals")(
    lambda y, score, value, groups: threshold_for_fpr(y, score, float(value), groups)
)


@dataclass(frozen=True)
class Policy:
    """A parsed policy: ``recall:0.97``, ``budget:0.015``, ``fpr:0.05`` or a plain rule."""

    kind: str  # a registered rule's name (THRESHOLD_RULES)
    value: float | None = None

    @classmethod
    def parse(cls, text: str) -> Policy:
        kind, _, value = text.partition(":")
        rule = THRESHOLD_RULES.get(kind)
        if rule is None or rule.takes_value != bool(value):
            raise ValueError(f"unknown threshold rule {text!r}: use {rules_help()}")
        try:
            return cls(kind, float(value) if value else None)
        except ValueError:
            raise ValueError(f"threshold rule {text!r}: {value!r} is not a number") from None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"

    def threshold(
        self, y: np.ndarray, score: np.ndarray, groups: np.ndarray | None = None
    ) -> float:
        """The threshold on validation outputs; ``groups`` (each image's source) matter to
        rules that hold every group to a rate (``fpr``)."""
        return THRESHOLD_RULES[self.kind].fit(y, score, self.value, groups)
