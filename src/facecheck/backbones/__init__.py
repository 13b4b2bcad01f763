"""One registry of backbones: weights, preprocessing, cost; frozen and fine-tunable."""
