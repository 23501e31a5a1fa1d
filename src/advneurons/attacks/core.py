"""Shared pieces of every attack: units, eval mode, projections onto the threat balls, margins, queries.

Everything works in pixel space [0, 1] with budgets in [0, 1] units; the config speaks 1/255 units and
`from_255` converts.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# Norms below this are treated as zero when normalising gradients or perturbations (avoids 0/0).
TINY = 1e-12


def from_255(value: float) -> float:
    return float(value) / 255.0


@contextmanager
def eval_mode(model: nn.Module):
    """Put the model in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def per_image(values: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, 1, 1) for broadcasting against an image batch."""
    return values.view(-1, *([1] * 3))


def l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norm of a batch."""
    return t.flatten(1).norm(dim=1)


def linf_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-image L-inf norm of a batch."""
    return t.flatten(1).abs().amax(dim=1)


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point of the L-inf eps-ball around x that is also a valid image."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def linf_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel bounds of (L-inf eps-ball around x) intersected with [0, 1]; one clamp then projects."""
    return (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Shrink x_adv - x onto the L2 eps-ball, then clip to [0, 1].

    Clipping after the ball projection keeps the point inside the ball: x lies in [0, 1], so clipping
    only moves each coordinate towards x.
    """
    delta = x_adv - x
    scale = (eps / l2_norms(delta).clamp_min(TINY)).clamp_(max=1.0)
    return (x + delta * per_image(scale)).clamp_(0.0, 1.0)


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Z_y - max_{j != y} Z_j per row: positive while the label still wins.

    The label's own entry is masked with -inf, not multiplied by a zero one-hot: a zeroed entry would
    beat every other class whenever all logits are negative and make the margin wrong.
    """
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return true - others


def loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """Gradient of the summed cross-entropy w.r.t. the input (negated for a targeted attack).

    Summing (not averaging) keeps each image's gradient independent of the batch size; only the
    input's gradient is requested, so autograd skips the weight gradients. Works inside torch.no_grad too.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        if targeted:
            loss = -loss  # descend towards the target class
        (grad,) = torch.autograd.grad(loss, x)
    return grad


class QueryOracle:
    """Query-only access to a model for black-box attacks: logits under torch.no_grad, counted.

    `chunk` bounds how many inputs go through the model at once, so large populations fit in memory.
    """

    def __init__(self, model: nn.Module, chunk: int = 256):
        self.model = model
        self.chunk = max(1, int(chunk))
        self.queries = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.queries += len(x)
        if len(x) <= self.chunk:
            return self.model(x)
        return torch.cat([self.model(x[i : i + self.chunk]) for i in range(0, len(x), self.chunk)])


def rand_uniform(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """U(0, 1) drawn on the CPU from `generator` (reproducible across devices), moved to `like`'s device."""
    return torch.rand(shape, generator=generator, dtype=like.dtype).to(like.device)


def rand_normal(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)


class ExpectedLogits(nn.Module):
    """What an adaptive attack sees of a randomised defense: its mean logits over the defense's noise (EOT).

    The defense supplies ``expected_logits(x)`` (e.g. advneurons.defenses.ig_defense.IGDefense, averaging over its
    ``eot_samples`` draws); gradients through them are the noise-averaged gradients of the logits.
    """

    def __init__(self, defense: nn.Module):
        super().__init__()
        self.defense = defense

    @property
    def fc(self):
        return getattr(self.defense, "fc", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.defense.expected_logits(x)


def attack_target(model: nn.Module) -> nn.Module:
    """The model an attack should optimise against: a randomised defense (``randomised = True``) is attacked
    through its expected logits, anything else directly."""
    return ExpectedLogits(model) if getattr(model, "randomised", False) else model


def adaptive_note(model: nn.Module) -> str:
    """How the attacks treat ``model``, for tables: empty for a deterministic model."""
    if not getattr(model, "randomised", False):
        return ""
    return f"adaptive: EOT over {model.eot_samples} noise draws of the randomised defense"
