"""The three-way decision of a filter with a human in the loop, and what it costs.

Each image is decided ``FAKE`` (refused automatically), ``REAL`` (passed automatically) or
``REVIEW`` (sent to a person): the thesis's 2x3 matrix (rows actual fake, real) and the
workload and misses it means at a bank's fake rate.
"""

from __future__ import annotations

import numpy as np

from facecheck.decision.policy import DEPLOYED_FAKE_RATE


def safe_div(a: float, b: float) -> float:
    return a / b if b else float("nan")


# -- three-way decisions: automatic fake, automatic real, or sent to a person
FAKE, REAL, REVIEW = 1, 0, -1


DECISIONS = {FAKE: "fake", REAL: "real", REVIEW: "review"}


def review_matrix(y: np.ndarray, decision: np.ndarray) -> np.ndarray:
    """The 2x3 human-review matrix: rows actual fake, real; columns fake, real, review."""
    y, decision = np.asarray(y), np.asarray(decision)
    return np.array(
        [
            [int(((y == actual) & (decision == d)).sum()) for d in (FAKE, REAL, REVIEW)]
            for actual in (1, 0)
        ]
    )


def review_metrics(
    y: np.ndarray, decision: np.ndarray, fake_rate: float = DEPLOYED_FAKE_RATE
) -> dict[str, float]:
    """What a three-way policy gives: automatic-verdict quality and the human workload.

    ``auto_recall``/``auto_precision`` count automatic verdicts only (the thesis's figures);
    ``caught`` is the share of fakes *not* waved through automatically (flagged fake or sent
    to a person), the recall that matters for a filter. ``review_share`` is the share of
    these images a person sees; ``review_per_10k`` and ``missed_per_10k`` re-weight the
    per-class rates to ``fake_rate`` (1:1000 by default).
    """
    return matrix_metrics(review_matrix(y, decision), fake_rate)


def matrix_metrics(m: np.ndarray, fake_rate: float = DEPLOYED_FAKE_RATE) -> dict[str, float]:
    """:func:`review_metrics` from a 2x3 matrix (e.g. one summed over several seeds)."""
    (ff, fr, fv), (rf, rr, rv) = np.asarray(m).tolist()
    n_fake, n_real = ff + fr + fv, rf + rr + rv
    n = n_fake + n_real
    fake_review = safe_div(fv, n_fake)
    real_review = safe_div(rv, n_real)
    return {
        "n": n,
        "n_fake": n_fake,
        "auto_recall": safe_div(ff, ff + fr),
        "auto_precision": safe_div(ff, ff + rf),
        "caught": safe_div(ff + fv, n_fake),
        "review_share": safe_div(fv + rv, n),
        "flagged_share": safe_div(ff + fv + rf + rv, n),
        "auto_errors": fr + rf,
        "missed": fr,
        "review_per_10k": 10_000 * (fake_rate * fake_review + (1 - fake_rate) * real_review),
        # Flagged = sent to a person or refused automatically: what is not waved through.
        "flagged_per_10k": 10_000
        * (fake_rate * safe_div(ff + fv, n_fake) + (1 - fake_rate) * safe_div(rf + rv, n_real)),
        "missed_per_10k": 10_000 * fake_rate * safe_div(fr, n_fake),
    }


def decisions_from_threshold(score: np.ndarray, threshold: float) -> np.ndarray:
    """A single-score detector's three-way form: every flag goes to a person, no auto-fake."""
    return np.where(np.asarray(score) >= threshold, REVIEW, REAL)
