"""Voting (2x3 human-review matrix), stacking, operating-point policy and calibration."""

from __future__ import annotations

import numpy as np
import pytest

from facecheck.decision.calibration import Calibrator
from facecheck.decision.ensemble import StackingClassifier, VotingClassifier
from facecheck.decision.policy import (
    Policy,
    choose_threshold,
    threshold_for_budget,
    threshold_for_fpr,
    threshold_for_recall,
)
from facecheck.decision.review import FAKE, REAL, REVIEW, review_matrix, review_metrics


def test_unanimous_vote_on_a_constructed_example():
    # 3 members at threshold 0.5. Rows: fakes then reals.
    S = np.array(
        [
            [0.9, 0.8, 0.7],  # fake, all say fake       -> automatic fake
            [0.9, 0.2, 0.7],  # fake, disagree           -> person
            [0.1, 0.2, 0.3],  # fake, all say real       -> automatic real (a miss)
            [0.6, 0.6, 0.9],  # real, all say fake       -> automatic fake (false alarm)
            [0.1, 0.6, 0.2],  # real, disagree           -> person
            [0.1, 0.2, 0.3],  # real, all say real       -> automatic real
            [0.0, 0.4, 0.49],  # real                    -> automatic real
        ]
    )
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    vote = VotingClassifier([0.5, 0.5, 0.5])
    d = vote.decide(S)
    assert d.tolist() == [FAKE, REVIEW, REAL, FAKE, REVIEW, REAL, REAL]
    assert review_matrix(y, d).tolist() == [[1, 1, 1], [1, 2, 1]]
    m = review_metrics(y, d)
    assert m["auto_recall"] == pytest.approx(1 / 2)  # automatic verdicts on fakes: 1 of 2
    assert m["auto_precision"] == pytest.approx(1 / 2)
    assert m["caught"] == pytest.approx(2 / 3)
    assert m["review_share"] == pytest.approx(2 / 7)
    assert m["auto_errors"] == 2 and m["missed"] == 1
    # review_per_10k re-weights per-class review rates to 1:1000.
    assert m["review_per_10k"] == pytest.approx(10_000 * (0.001 / 3 + 0.999 / 4))
    # The thesis's validation variant: one fake vote is enough.
    any_fake = VotingClassifier([0.5, 0.5, 0.5], rule="any").decide(S)
    assert any_fake.tolist() == [FAKE, FAKE, REAL, FAKE, FAKE, REAL, REAL]


def _scores(n_real=900, n_fake=100, members=4, seed=0):
    """Members that see a shared signal plus their own noise (so they disagree sometimes)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_real, int), np.ones(n_fake, int)]
    signal = y * 1.5 + rng.normal(size=len(y))
    z = signal[:, None] + rng.normal(scale=0.8, size=(len(y), members))
    return 1 / (1 + np.exp(-z)), y


def test_operating_point_reaches_target_recall_on_validation():
    S, y = _scores()
    for target in (0.8, 0.9, 0.97, 1.0):
        t = threshold_for_recall(y, S[:, 0], target)
        assert (S[y == 1, 0] >= t).mean() >= target
        # It is the fewest flags that do: the next score up loses the target.
        higher = np.unique(S[:, 0])[np.unique(S[:, 0]) > t]
        if higher.size:
            assert (S[y == 1, 0] >= higher[0]).mean() < target
    assert Policy.parse("recall:0.9").threshold(y, S[:, 0]) == threshold_for_recall(y, S[:, 0], 0.9)


def test_review_budget_is_respected_at_the_stated_fake_rate():
    S, y = _scores()
    s = S[:, 0]
    for budget in (0.01, 0.05, 0.2):
        t = threshold_for_budget(y, s, budget, fake_rate=0.001)
        share = 0.001 * (s[y == 1] >= t).mean() + 0.999 * (s[y == 0] >= t).mean()
        assert share <= budget + 1e-12
    # A smaller budget never gives a lower threshold.
    assert threshold_for_budget(y, s, 0.01) >= threshold_for_budget(y, s, 0.05)


def test_fpr_rule_holds_every_real_source_to_the_rate_and_ignores_fakes():
    S, y = _scores(seed=4)
    s = S[:, 0].copy()
    # Two real sources: the second's photos score higher (as rff's do beside UTKFace's).
    groups = np.where(np.arange(len(y)) % 3 == 0, "b", "a")
    s[(groups == "b") & (y == 0)] += 0.15
    for rate in (0.01, 0.05, 0.1, 0.3):
        t = threshold_for_fpr(y, s, rate, groups)
        shares = {g: (s[(y == 0) & (groups == g)] >= t).mean() for g in ("a", "b")}
        assert max(shares.values()) <= rate + 1e-12
        # The lowest such threshold: one real score lower breaks the rate for some source.
        below = np.sort(s[y == 0][s[y == 0] < t])
        if below.size:
            lower = below[-1]
            assert any((s[(y == 0) & (groups == g)] >= lower).mean() > rate for g in ("a", "b"))
        pooled = threshold_for_fpr(y, s, rate)
        assert (s[y == 0] >= pooled).mean() <= rate + 1e-12 and pooled <= t
        # The fakes play no part.
        moved = np.where(y == 1, s * 0.5, s)
        assert threshold_for_fpr(y, moved, rate, groups) == t
    assert Policy.parse("fpr:0.05").threshold(y, s, groups) == threshold_for_fpr(y, s, 0.05, groups)
    assert choose_threshold(y, s, "fpr:0.05", groups) == threshold_for_fpr(y, s, 0.05, groups)
    assert threshold_for_fpr(y, s, 1.0) == 0.0  # flag everything
    with pytest.raises(ValueError, match="rate"):
        threshold_for_fpr(y, s, 1.5)


def test_vote_policy_reaches_target_on_validation():
    S, y = _scores(seed=1)
    vote = VotingClassifier().fit_target_recall(S, y, target=0.97)
    assert vote.target_reached_
    assert review_metrics(y, vote.decide(S))["caught"] >= 0.97
    # A lower target costs less work.
    easy = VotingClassifier().fit_target_recall(S, y, target=0.8)
    assert (
        review_metrics(y, easy.decide(S))["flagged_share"]
        <= review_metrics(y, vote.decide(S))["flagged_share"]
    )


def test_stacking_learns_from_validation_and_keeps_out_of_fold_scores():
    from sklearn.metrics import roc_auc_score

    S, y = _scores(seed=2)
    S[:, 3] = np.random.default_rng(0).uniform(size=len(y))  # one useless member
    stack = StackingClassifier().fit(S, y)
    assert stack.oof_scores_.shape == (len(y),)
    assert abs(stack.weights[3]) < min(abs(stack.weights[:3]))
    T, yt = _scores(seed=3)
    assert (
        roc_auc_score(yt, stack.predict_proba(T)[:, 1])
        >= max(roc_auc_score(yt, T[:, j]) for j in range(3)) - 0.01
    )


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_calibration_makes_scores_mean_probabilities(method):
    rng = np.random.default_rng(0)
    # Overconfident scores: the true probability is sigmoid(z / 3).
    z = rng.normal(scale=4, size=20_000)
    y = (rng.uniform(size=z.size) < 1 / (1 + np.exp(-z / 3))).astype(int)
    s = 1 / (1 + np.exp(-z))
    cal = Calibrator(method).fit(s[:10_000], y[:10_000])
    p, yt = cal.transform(s[10_000:]), y[10_000:]
    bins = np.digitize(p, [0.2, 0.4, 0.6, 0.8])
    for b in range(5):
        assert abs(p[bins == b].mean() - yt[bins == b].mean()) < 0.05
    if method == "temperature":
        assert cal.temperature_ == pytest.approx(3, rel=0.15)


def test_prior_shift_to_the_deployed_fake_rate():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(1000, int), np.ones(1000, int)]
    s = np.clip(0.5 + (y - 0.5) * 0.4 + rng.normal(scale=0.2, size=y.size), 0.01, 0.99)
    balanced = Calibrator().fit(s, y).transform(s)
    deployed = Calibrator(fake_rate=0.001).fit(s, y).transform(s)
    # Calibrated at 1:1000, the expected probability over a 1:1000 stream is about 1/1000.
    stream = 0.999 * deployed[y == 0].mean() + 0.001 * deployed[y == 1].mean()
    assert 0.0005 < stream < 0.003  # exact only for perfectly calibrated scores
    assert balanced.mean() == pytest.approx(0.5, abs=0.02)
    assert np.all(np.diff(deployed[np.argsort(s)]) >= -1e-12)  # ranking kept
