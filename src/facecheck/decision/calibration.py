"""Scores -> probabilities (temperature scaling or isotonic regression), fitted on
validation outputs. Applying a saved calibration needs numpy alone (scikit-learn and scipy
are imported to fit one), so the torch-free scoring path starts fast."""

from __future__ import annotations

import numpy as np

from facecheck.heads.link import logit, sigmoid


class Calibrator:
    """Scores -> probabilities, fitted on validation outputs.

    ``temperature``: p = sigmoid(logit(s) / T + b), T and b by log-loss (Platt scaling, which
    keeps the ranking); ``isotonic``: scikit-learn's monotone step fit. ``fake_rate`` shifts
    the prior from the validation split's fake share to the deployed rate (Bayes' rule on
    the odds), so probabilities describe the bank's stream, not the split.
    """

    def __init__(self, method: str = "temperature", fake_rate: float | None = None):
        if method not in ("temperature", "isotonic"):
            raise ValueError(f"unknown calibration {method!r}: use temperature or isotonic")
        self.method = method
        self.fake_rate = fake_rate

    def fit(self, score: np.ndarray, y: np.ndarray) -> Calibrator:
        y, score = np.asarray(y, dtype=np.int64), np.asarray(score, dtype=np.float64)
        if len(np.unique(y)) < 2:
            raise ValueError("calibration needs both classes in the validation outputs")
        self.val_rate_ = float(y.mean())
        if self.method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            self.iso_ = IsotonicRegression(y_min=1e-6, y_max=1 - 1e-6, out_of_bounds="clip")
            self.iso_.fit(score, y)
            return self
        from scipy.optimize import minimize_scalar

        z = logit(score)

        def nll(params: np.ndarray) -> float:
            t, b = params
            q = np.clip(sigmoid(z / t + b), 1e-12, 1 - 1e-12)
            return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

        # 1-D search on T nested around the best bias for it: robust and dependency-light.
        def best_b(t: float) -> tuple[float, float]:
            r = minimize_scalar(lambda b: nll(np.array([t, b])), bounds=(-20, 20), method="bounded")
            return float(r.fun), float(r.x)

        r = minimize_scalar(lambda lt: best_b(np.exp(lt))[0], bounds=(-4, 4), method="bounded")
        self.temperature_ = float(np.exp(r.x))
        self.bias_ = best_b(self.temperature_)[1]
        return self

    def transform(self, score: np.ndarray) -> np.ndarray:
        score = np.asarray(score, dtype=np.float64)
        if self.method == "isotonic":
            p = self.iso_.predict(score)
        else:
            p = sigmoid(logit(score) / self.temperature_ + self.bias_)
        if self.fake_rate is None:
            return p
        shift = np.log(self.fake_rate / (1 - self.fake_rate)) - np.log(
            self.val_rate_ / (1 - self.val_rate_)
        )
        return sigmoid(logit(p) + shift)

    def to_dict(self) -> dict[str, object]:
        """Plain values for a bundle (temperature scaling only: isotonic is a step table)."""
        if self.method != "temperature":
            raise ValueError("only temperature calibration can be saved in a bundle")
        return {
            "method": self.method,
            "temperature": self.temperature_,
            "bias": self.bias_,
            "val_rate": self.val_rate_,
            "fake_rate": self.fake_rate,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Calibrator:
        cal = cls(str(d["method"]), d.get("fake_rate"))
        cal.temperature_, cal.bias_ = float(d["temperature"]), float(d["bias"])
        cal.val_rate_ = float(d["val_rate"])
        return cal
