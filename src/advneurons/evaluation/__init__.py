"""Evaluation: accuracy under attacks, adversarial pair sets, per-neuron sensitivity, PGD sweeps,
robustness tables, transfer checks, and the paired statistics the claims are decided with."""
