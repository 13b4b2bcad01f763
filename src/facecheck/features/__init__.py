"""Batched feature extraction, the views a pass is read through, the on-disk cache."""
