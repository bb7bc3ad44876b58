"""Offline evaluation: off-policy estimators over logged transitions, and policy comparisons in the simulator."""
