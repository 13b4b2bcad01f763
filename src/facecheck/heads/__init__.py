"""Heads with scikit-learn's estimator API, imbalance strategies, the logit link."""
