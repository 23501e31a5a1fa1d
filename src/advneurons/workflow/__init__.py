"""Workflow wiring in plain Python (no torch): code fingerprints of the steps."""
