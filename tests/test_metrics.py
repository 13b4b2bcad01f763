"""Metrics against hand-computed cases; thresholds from validation; bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facecheck.decision.policy import choose_threshold, threshold_for_fpr
from facecheck.evaluation.metrics import (
    binary_metrics,
    bootstrap_ci,
    flagged_per_10k,
    paired_auc_difference,
    recall_at_fpr,
)

# 4 fakes, 6 reals. At threshold 0.5: fakes scored .9 .8 .4 .6 -> TP 3, FN 1;
# reals scored .7 .3 .2 .1 .55 .05 -> FP 2, TN 4.
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
S = np.array([0.9, 0.8, 0.4, 0.6, 0.7, 0.3, 0.2, 0.1, 0.55, 0.05])


def test_hand_computed_case():
    m = binary_metrics(Y, S, 0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 2, 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["fpr"] == pytest.approx(2 / 6)
    # ROC-AUC = share of (fake, real) pairs ranked right: fakes .9,.8,.6,.4 beat 6,6,5,4
    # of the reals (.4 loses to .7 and .55) -> 21 of 24 pairs.
    assert m["roc_auc"] == pytest.approx(21 / 24)
    # Average precision: precision at each fake's rank (1, 2, 4, 6) -> 1, 1, 3/4, 4/6.
    assert m["pr_auc"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    assert (m["n"], m["n_fake"]) == (10, 4)


def test_score_equal_to_threshold_is_fake():
    m = binary_metrics(np.array([1, 0]), np.array([0.5, 0.49]), 0.5)
    assert m["tp"] == 1 and m["tn"] == 1


def test_one_class_gives_nan_not_crash():
    m = binary_metrics(np.zeros(5, int), np.linspace(0, 1, 5), 0.5)
    assert math.isnan(m["roc_auc"]) and math.isnan(m["recall"])
    assert m["fpr"] == pytest.approx(3 / 5)  # 0.5, 0.75 and 1.0 are at or over 0.5


def test_flagged_per_10k():
    # 1 fake in 1000: recall .9 catches 9 of 10 fakes; FPR 2% flags 199.8 of 9,990 reals.
    assert flagged_per_10k(0.9, 0.02) == pytest.approx(9 + 199.8)


def test_choose_threshold_rules():
    assert choose_threshold(Y, S, "recall:1.0") == pytest.approx(0.4)
    assert choose_threshold(Y, S, "recall:0.75") == pytest.approx(0.6)
    # Youden J = recall - FPR: .8 -> .5 - 0; .6 -> .75 - 1/6; .4 -> 1 - 2/6 = .667, the best.
    assert choose_threshold(Y, S, "youden") == pytest.approx(0.4)
    f1_thr = choose_threshold(Y, S, "f1")
    best = max(binary_metrics(Y, S, t)["f1"] for t in S)
    assert binary_metrics(Y, S, f1_thr)["f1"] == pytest.approx(best)
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_threshold(Y, S, "magic")
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.zeros(3, int), np.ones(3), "youden")


def test_recall_target_reached_on_validation():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.1).astype(int)
    s = rng.normal(y * 1.5, 1.0)
    for target in (0.8, 0.9, 0.97):
        thr = choose_threshold(y, s, f"recall:{target}")
        assert binary_metrics(y, s, thr)["recall"] >= target


def test_recall_at_fpr():
    assert recall_at_fpr(Y, S, 0.0) == pytest.approx(2 / 4)  # above .7: .9 and .8
    assert recall_at_fpr(Y, S, 1 / 6) == pytest.approx(3 / 4)


def test_bootstrap_interval_covers_estimate_and_shrinks_with_data():
    rng = np.random.default_rng(1)

    def sample(n):
        y = np.r_[np.ones(n // 2, int), np.zeros(n - n // 2, int)]
        return y, rng.normal(y * 1.0, 1.0)

    y1, s1 = sample(60)
    y2, s2 = sample(2000)
    ci1 = bootstrap_ci(y1, s1, 0.5, n_boot=300, seed=0)
    ci2 = bootstrap_ci(y2, s2, 0.5, n_boot=300, seed=0)
    m1 = binary_metrics(y1, s1, 0.5)
    for k in ("recall", "roc_auc", "accuracy"):
        lo, hi = ci1[k]
        assert lo <= m1[k] <= hi
        assert (ci2[k][1] - ci2[k][0]) < (hi - lo) / 2
    assert bootstrap_ci(y1, s1, 0.5, n_boot=300, seed=0) == ci1  # seeded


def test_paired_auc_difference_sees_a_small_shared_shift():
    """Two models sharing most of their errors: the paired interval excludes zero where the
    separate intervals overlap; identical scores differ by exactly zero."""
    rng = np.random.default_rng(0)
    y = np.repeat([1, 0], 100)
    common = rng.normal(size=200) + 1.2 * y
    better = common + 0.2 * y + 0.1 * rng.normal(size=200)
    out = paired_auc_difference(y, common, better, n_boot=500)
    assert out["difference"] > 0 and out["ci_lo"] > 0 and out["share_b_lower"] < 0.025
    sep_a = bootstrap_ci(y, common, 0.0, metrics=("roc_auc",))["roc_auc"]
    sep_b = bootstrap_ci(y, better, 0.0, metrics=("roc_auc",))["roc_auc"]
    assert sep_b[0] < sep_a[1]  # the separate intervals overlap
    same = paired_auc_difference(y, common, common, n_boot=50)
    assert same["difference"] == same["ci_lo"] == same["ci_hi"] == 0.0
    with pytest.raises(ValueError, match="one score per image"):
        paired_auc_difference(y, common, better[:-1])


def test_fpr_threshold_survives_float32_rescoring():
    """A real just below the threshold stays below when the same picture is scored again
    with float32 rounding, and the margin never reaches the next real's score."""
    y = np.array([0, 0, 0, 0, 1])
    score = np.array([0.1, 0.2, 0.42649288830694043, 0.9, 0.95])
    thr = threshold_for_fpr(y, score, 0.25)  # one of four reals may be flagged: 0.9
    again = np.float64(np.float32(score[2])) + 4 * np.finfo(np.float32).eps * score[2]
    assert again < thr < 0.9
    close = np.array([0.5, 0.5 + 1e-7, 0.2, 0.9])
    thr = threshold_for_fpr(np.array([0, 0, 0, 1]), close, 1 / 3)
    assert 0.5 < thr < 0.5 + 1e-7


def test_a_threshold_rule_is_one_registration():
    """A new rule is one decorated function: choose_threshold, Policy and every command's
    --threshold-rule take it by name; unknown names and bad values are refused."""
    from facecheck.decision.policy import THRESHOLD_RULES, Policy, threshold_rule

    @threshold_rule("quantile", takes_value=True, summary="the reals' q-quantile")
    def _quantile(y, score, value, _groups):
        return float(np.quantile(score[y == 0], value))

    try:
        y = np.array([0, 0, 0, 0, 1, 1])
        s = np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.9])
        assert choose_threshold(y, s, "quantile:0.5") == pytest.approx(0.25)
        assert str(Policy.parse("quantile:0.5")) == "quantile:0.5"
        for bad in ("quantile", "youden:0.3", "nope", "fpr:x"):
            with pytest.raises(ValueError):
                Policy.parse(bad)
    finally:
        del THRESHOLD_RULES["quantile"]
