"""Threshold rules, calibration, operating-point policies and the human-review vote."""
