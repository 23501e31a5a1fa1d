"""Defenses of trained models (MeanSparse, IG-Defense) and the tables and claims that compare defenses."""
