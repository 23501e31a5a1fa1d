"""Propagation-sensitive neurons (verified bounds with auto_LiRPA): scores, the bounded graph, the
auto_LiRPA compatibility fixes, and the analyses of the scored units."""
