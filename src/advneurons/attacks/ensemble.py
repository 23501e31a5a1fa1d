"""AutoAttack through the `pyautoattack` package (the authors' reference code, packaged for PyPI).

The "standard" version runs APGD-CE, APGD-T (9 targets), FAB-T (9 targets) and Square (5000 queries), each
on the images the previous ones did not fool. AutoAttack seeds torch's global RNG itself; the call runs
inside torch.random.fork_rng so the caller's global RNG state is untouched, and the seed is drawn from the
caller's generator.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .core import eval_mode

NORMS = {"linf": "Linf", "l2": "L2"}
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "linf",
    version: str = "standard",
    attacks: list[str] | None = None,
    generator: torch.Generator | None = None,
    apgd_restarts: int | None = None,
) -> torch.Tensor:
    """Perturbed images from AutoAttack (`attacks` picks a subset, e.g. ["apgd-ce"], with version="custom").

    `apgd_restarts` overrides APGD-CE's restart count. The authors' code runs APGD-CE with 1 restart in the
    standard version but keeps its default of 5 in a custom one, so a custom APGD-CE equals the standard
    ensemble's first stage only with `apgd_restarts=1` (and the same seed)."""
    try:
        from pyautoattack import AutoAttack
    except ImportError as exc:  # pragma: no cover - the package is a dependency
        raise ImportError("AutoAttack needs the 'pyautoattack' package: pip install pyautoattack") from exc
    if norm not in NORMS:
        raise ValueError(f"AutoAttack norm must be one of {', '.join(NORMS)}, got {norm!r}")
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else 0
    logging.getLogger("auto-attack").setLevel(logging.WARNING)  # its per-batch progress is debug chatter
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with eval_mode(model), torch.random.fork_rng(devices=devices):
        adversary = AutoAttack(
            model, eps=eps, norm=NORMS[norm], version=version, seed=seed, device=x.device,
            attacks=attacks if version == "custom" else None,
        )
        if apgd_restarts is not None:
            adversary.apgd.n_restarts = int(apgd_restarts)
        x_adv, _ = adversary.run_standard_evaluation(x.detach(), y, batch_size=len(x))
    return x_adv.detach().clamp(0.0, 1.0)
