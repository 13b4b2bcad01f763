"""Data sets and splits, protocols, metrics, audit and reports."""
