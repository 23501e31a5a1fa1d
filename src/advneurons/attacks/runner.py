"""Running a described attack: `run_attack(spec, model, x, y)` dispatches an AttackSpec to its implementation."""

from __future__ import annotations

import torch
from torch import nn

from advneurons.attacks.black_box import nattack, spsa
from advneurons.attacks.core import eval_mode
from advneurons.attacks.ensemble import autoattack
from advneurons.attacks.noise import gaussian_noise, uniform_noise
from advneurons.attacks.spec import AttackSpec
from advneurons.attacks.white_box import choose_targets, cw_l2, fgsm, mifgsm, pgd_l2, pgd_linf, step_ll


def attack_targets(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Target classes a pgd_targeted attack would aim at for these images."""
    if spec.type != "pgd_targeted":
        raise ValueError(f"{spec.type} is not a targeted attack")
    if spec.target == "least_likely":
        logits = _eval_logits(model, x)
    else:
        logits = torch.empty(len(y), _num_classes(model, x), device=y.device)
    return choose_targets(spec.target, y, logits, generator)


def run_attack(
    spec: AttackSpec,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator | None = None,
    targets: torch.Tensor | None = None,
    autoattack_log=None,
    query_counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Perturbed copies of x (labels y) in [0, 1]; `targets` overrides a targeted attack's target rule;
    `autoattack_log` (an AutoAttackLog) collects AutoAttack's per-stage accuracy and warnings;
    `query_counts` (int64, one per image) gains the queries a score-based black-box attack (SPSA, NAttack)
    spent on each image; other attacks leave it unchanged."""
    t = spec.type
    if t == "fgsm":
        return fgsm(model, x, y, spec.eps)
    if t == "step_ll":
        return step_ll(model, x, spec.eps)
    if t == "mifgsm":
        return mifgsm(model, x, y, spec.eps, spec.steps, spec.step_size, spec.decay)
    if t == "pgd":
        return pgd_linf(model, x, y, spec.eps, spec.steps, spec.step_size, spec.random_start, generator=generator)
    if t == "pgd_targeted":
        if targets is None:
            targets = attack_targets(spec, model, x, y, generator)
        return pgd_linf(model, x, targets, spec.eps, spec.steps, spec.step_size, spec.random_start,
                        targeted=True, generator=generator)
    if t == "pgd_l2":
        return pgd_l2(model, x, y, spec.eps, spec.steps, spec.step_size, spec.random_start, generator=generator)
    if t == "cw_l2":
        return cw_l2(model, x, y, spec.steps, spec.search_steps, spec.initial_const, spec.confidence, spec.lr,
                     max_norm=spec.eps)
    if t == "gaussian":
        return gaussian_noise(x, spec.sigma, generator)
    if t == "uniform":
        return uniform_noise(x, spec.eps, generator)
    if t == "spsa":
        return spsa(model, x, y, spec.eps, spec.steps, spec.samples, spec.lr, spec.delta, spec.random_start,
                    generator=generator, query_counts=query_counts)
    if t == "nattack":
        return nattack(model, x, y, spec.eps, spec.steps, spec.samples, spec.lr, spec.search_sigma,
                       generator=generator, query_counts=query_counts)
    return autoattack(model, x, y, spec.eps, spec.norm, spec.version, generator=generator, log=autoattack_log,
                      iterations=spec.steps, queries=spec.queries, stages=spec.stages)


def _eval_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with eval_mode(model), torch.no_grad():
        return model(x)


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):
        return fc.out_features
    return _eval_logits(model, x[:1]).shape[1]
