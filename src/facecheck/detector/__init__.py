"""The detector: features -> head -> decision, its bundle, regions and heatmaps."""
