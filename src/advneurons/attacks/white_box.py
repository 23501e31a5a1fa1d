"""Gradient-based attacks: FGSM, Step-LL, MI-FGSM, L-inf and L2 PGD, C&W-L2.

All take images in [0, 1] and budgets in [0, 1] units, run the model in eval mode, and return detached
perturbed images in [0, 1].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from advneurons.attacks.core import (
    TINY,
    eval_mode,
    l2_norms,
    linf_box,
    loss_gradient,
    margin,
    per_image,
    project_l2,
    rand_normal,
    rand_uniform,
)

TARGET_RULES = ("next", "random", "least_likely")


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al.), untargeted."""
    with eval_mode(model):
        grad = loss_gradient(model, x, y, targeted=False)
        return (x + eps * grad.sign()).clamp(0.0, 1.0).detach()


@torch.no_grad()
def least_likely(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with eval_mode(model):
        return model(x).argmin(dim=1)


def step_ll(model: nn.Module, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Step-LL (Kurakin et al.): one signed step that descends the loss of the least-likely class.

    Needs no label: the target is the class the model finds least likely on the clean image.
    """
    with eval_mode(model):
        target = least_likely(model, x)
        grad = loss_gradient(model, x, target, targeted=True)
        return (x + eps * grad.sign()).clamp(0.0, 1.0).detach()


def mifgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    decay: float = 1.0,
) -> torch.Tensor:
    """Momentum iterative FGSM (Dong et al. 2018), untargeted; default step eps / steps.

    g <- decay * g + grad / ||grad||_1 (per image), x <- Proj(x + step * sign(g)).
    """
    if steps < 1:
        raise ValueError("MI-FGSM needs at least one step")
    step = eps / steps if step_size is None else step_size
    with eval_mode(model):
        x = x.detach()
        lo, hi = linf_box(x, eps)
        x_adv = x.clone()
        momentum = torch.zeros_like(x)
        for _ in range(steps):
            grad = loss_gradient(model, x_adv, y)
            l1 = grad.flatten(1).abs().sum(dim=1).clamp_min(TINY)
            momentum.mul_(decay).add_(grad / per_image(l1))
            x_adv = torch.clamp(x_adv + step * momentum.sign(), lo, hi)
        return x_adv


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
        lo, hi = linf_box(x, eps)  # ball and image box in one pair of bounds, computed once
        if random_start:
            noise = rand_uniform(x.shape, generator, x)
            x_adv = torch.clamp(x + (2.0 * noise - 1.0) * eps, lo, hi)
        else:
            x_adv = x.clone()
        for _ in range(steps):
            grad = loss_gradient(model, x_adv, y, targeted)
            x_adv = torch.clamp(x_adv.add_(grad.sign_(), alpha=step_size), lo, hi)
        return x_adv


def pgd_l2(
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
    """L2 projected gradient descent: steps along the L2-normalised gradient, projected onto the ball.

    Default step eps / sqrt(steps) (the papers' setting). The random start is uniform in the L2 ball.
    """
    if steps < 1:
        raise ValueError("PGD needs at least one step")
    if step_size is None:
        step_size = eps / math.sqrt(steps)
    with eval_mode(model):
        x = x.detach()
        if random_start:
            direction = rand_normal(x.shape, generator, x)
            direction = direction / per_image(l2_norms(direction).clamp_min(TINY))
            dims = x[0].numel()
            radius = eps * rand_uniform((len(x),), generator, x) ** (1.0 / dims)
            x_adv = project_l2(x + direction * per_image(radius), x, eps)
        else:
            x_adv = x.clone()
        for _ in range(steps):
            grad = loss_gradient(model, x_adv, y, targeted)
            grad = grad / per_image(l2_norms(grad).clamp_min(TINY))
            x_adv = project_l2(x_adv + step_size * grad, x, eps)
        return x_adv


@torch.no_grad()
def choose_targets(
    rule: str | int, labels: torch.Tensor, logits: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Target classes of a targeted attack.

    'next': (y + 1) mod C; 'random': uniform over the classes other than y (drawn from `generator`);
    'least_likely': argmin of the clean logits; an int: that class for every image.
    """
    num_classes = logits.shape[1]
    if isinstance(rule, bool):
        raise ValueError(f"target must be one of {', '.join(TARGET_RULES)} or a class index, got {rule!r}")
    if isinstance(rule, int):
        if not 0 <= rule < num_classes:
            raise ValueError(f"target class {rule} is outside 0..{num_classes - 1}")
        return torch.full_like(labels, rule)
    if rule == "next":
        return (labels + 1) % num_classes
    if rule == "random":
        shift = torch.randint(1, num_classes, labels.shape, generator=generator).to(labels.device)
        return (labels + shift) % num_classes
    if rule == "least_likely":
        return logits.argmin(dim=1)
    raise ValueError(f"target must be one of {', '.join(TARGET_RULES)} or a class index, got {rule!r}")


def cw_loss(
    logits: torch.Tensor, labels: torch.Tensor, confidence: float = 0.0
) -> torch.Tensor:
    """C&W objective term f = max(Z_y - max_{j != y} Z_j, -confidence) per image (untargeted).

    Zero (or -confidence) once another class wins by the confidence margin.
    """
    return margin(logits, labels).clamp(min=-confidence)


def _to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    # Shrink by 1e-6 so that saturated pixels (0 or 1) map to finite values.
    return torch.atanh((2.0 * x - 1.0) * (1.0 - 1e-6))


def _from_tanh_space(w: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(w) + 1.0) / 2.0


def cw_l2(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int = 300,
    search_steps: int = 3,
    initial_const: float = 0.01,
    confidence: float = 0.0,
    lr: float = 0.01,
    max_norm: float | None = None,
    abort_early: bool = True,
) -> torch.Tensor:
    """Carlini & Wagner L2 attack, untargeted.

    Minimises ||x' - x||_2^2 + c * f(x') over w with x' = (tanh(w) + 1) / 2, by Adam (`steps` iterations
    per value of c); a binary search over c per image starts at `initial_const` (x10 until a first
    success, then bisection) for `search_steps` rounds. Each image gets its smallest-L2 successful
    adversarial found during the whole search; images never fooled (or, with `max_norm`, only fooled
    farther than max_norm away) come back unchanged.
    """
    if steps < 1 or search_steps < 1:
        raise ValueError("C&W needs at least one step and one search step")
    with eval_mode(model), torch.enable_grad():
        x = x.detach()
        n = len(x)
        w0 = _to_tanh_space(x)
        const = torch.full((n,), float(initial_const), device=x.device)
        lower = torch.zeros(n, device=x.device)
        upper = torch.full((n,), 1e10, device=x.device)
        best_l2 = torch.full((n,), float("inf"), device=x.device)
        best_adv = x.clone()
        limit = float("inf") if max_norm is None else float(max_norm)
        for _ in range(search_steps):
            w = w0.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=lr)
            succeeded = torch.zeros(n, dtype=torch.bool, device=x.device)
            previous = float("inf")
            for it in range(steps):
                x_adv = _from_tanh_space(w)
                logits = model(x_adv)
                sq_dist = (x_adv - x).flatten(1).pow(2).sum(dim=1)
                f = cw_loss(logits, y, confidence)
                loss = (sq_dist + const * f).sum()
                with torch.no_grad():
                    # Success means another class wins by the confidence margin (strictly).
                    fooled = margin(logits, y) + confidence < 0
                    l2 = sq_dist.sqrt()
                    improved = fooled & (l2 < best_l2) & (l2 <= limit)
                    best_l2 = torch.where(improved, l2, best_l2)
                    best_adv[improved] = x_adv[improved].detach()
                    succeeded |= fooled & (l2 <= limit)
                optimizer.zero_grad(set_to_none=True)
                (grad,) = torch.autograd.grad(loss, w)
                w.grad = grad
                optimizer.step()
                if abort_early and steps >= 10 and it % max(1, steps // 10) == 0:
                    # Stop this round once the objective has stalled for a tenth of the iterations.
                    if loss.item() > previous * 0.9999:
                        break
                    previous = loss.item()
            with torch.no_grad():
                upper = torch.where(succeeded, torch.minimum(upper, const), upper)
                lower = torch.where(succeeded, lower, torch.maximum(lower, const))
                bounded = upper < 1e9
                const = torch.where(bounded, (lower + upper) / 2.0, const * 10.0)
        return best_adv.clamp_(0.0, 1.0)
