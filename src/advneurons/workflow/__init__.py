"""Workflow wiring in plain Python (no torch import): code fingerprints of the steps."""
