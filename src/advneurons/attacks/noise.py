"""Random corruptions: Gaussian noise at the CIFAR-10-C severities, and uniform noise in an L-inf ball."""

from __future__ import annotations

import torch

from advneurons.attacks.core import rand_normal, rand_uniform

# Standard deviations (in [0, 1] pixel units) of CIFAR-10-C's gaussian_noise corruption, severities 1..5
# (Hendrycks & Dietterich 2019).
CIFAR10C_GAUSSIAN_SIGMAS = (0.04, 0.06, 0.08, 0.09, 0.10)


def severity_sigma(severity: int) -> float:
    if not 1 <= int(severity) <= len(CIFAR10C_GAUSSIAN_SIGMAS) or int(severity) != severity:
        raise ValueError(f"Gaussian noise severity must be an integer 1..5, got {severity!r}")
    return CIFAR10C_GAUSSIAN_SIGMAS[int(severity) - 1]


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + N(0, sigma^2) per pixel, clipped to [0, 1] (as CIFAR-10-C builds it, before its uint8 rounding)."""
    if sigma < 0:
        raise ValueError(f"noise sigma must be non-negative, got {sigma}")
    return (x + sigma * rand_normal(x.shape, generator, x)).clamp_(0.0, 1.0)


def uniform_noise(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + U(-eps, eps) per pixel, clipped to [0, 1]: a random point of the L-inf eps-ball."""
    return (x + (2.0 * rand_uniform(x.shape, generator, x) - 1.0) * eps).clamp_(0.0, 1.0)
