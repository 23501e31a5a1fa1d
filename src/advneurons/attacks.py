"""White-box attacks in pixel space [0, 1].

Budgets arrive in [0, 1] units (the config speaks 1/255 units; `from_255` converts). The model is put in
eval mode for the attack and restored afterwards. Randomness (PGD's random start) comes from an explicit
torch.Generator so that pair sets are reproducible.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ATTACK_TYPES = ("fgsm", "pgd")


def from_255(value: float) -> float:
    return float(value) / 255.0


@contextmanager
def eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    if targeted:
        loss = -loss  # descend towards the target class
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point of the L-inf eps-ball around x that is also a valid image."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al.), untargeted."""
    with eval_mode(model):
        grad = _loss_gradient(model, x, y, targeted=False)
        return (x + eps * grad.sign()).clamp(0.0, 1.0).detach()


def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float | None = None,
    random_start: bool = False,
    targeted: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L-inf projected gradient descent (Madry et al.).

    `y` is the true label (untargeted: maximise its loss) or the target (targeted: minimise its loss).
    The default step is eps / sqrt(steps), the papers' setting.
    """
    if steps < 1:
        raise ValueError("PGD needs at least one step")
    if step_size is None:
        step_size = eps / math.sqrt(steps)
    with eval_mode(model):
        x = x.detach()
        if random_start:
            noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
            x_adv = (x + (2.0 * noise - 1.0) * eps).clamp(0.0, 1.0)
        else:
            x_adv = x.clone()
        for _ in range(steps):
            grad = _loss_gradient(model, x_adv, y, targeted)
            x_adv = project_linf(x_adv + step_size * grad.sign(), x, eps)
        return x_adv.detach()


@dataclass(frozen=True)
class AttackSpec:
    """One configured attack; eps and step size in [0, 1] units."""

    type: str
    eps: float
    steps: int = 1
    step_size: float | None = None
    random_start: bool = False

    @classmethod
    def from_config(cls, cfg: dict) -> "AttackSpec":
        """From a config entry whose eps/step_size are in 1/255 units."""
        kind = cfg["type"]
        if kind not in ATTACK_TYPES:
            raise ValueError(f"unknown attack type {kind!r}; choose one of {', '.join(ATTACK_TYPES)}")
        if cfg["eps"] < 0:
            raise ValueError(f"attack eps must be non-negative, got {cfg['eps']}")
        step = cfg.get("step_size")
        return cls(
            type=kind,
            eps=from_255(cfg["eps"]),
            steps=int(cfg.get("steps", 1)),
            step_size=None if step is None else from_255(step),
            random_start=bool(cfg.get("random_start", False)),
        )

    def describe(self) -> str:
        eps = f"eps={self.eps * 255:g}/255"
        if self.type == "fgsm":
            return f"FGSM {eps}"
        step = self.step_size if self.step_size is not None else self.eps / math.sqrt(self.steps)
        rs = ", random start" if self.random_start else ""
        return f"L-inf PGD {eps}, {self.steps} steps of {step * 255:.3g}/255{rs}"

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        if self.type == "fgsm":
            return fgsm(model, x, y, self.eps)
        return pgd_linf(model, x, y, self.eps, self.steps, self.step_size, self.random_start, generator=generator)
