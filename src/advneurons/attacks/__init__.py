"""Attacks in pixel space [0, 1]: white-box, black-box (query-only), noise, and AutoAttack.

Budgets inside the package are in [0, 1] units (the config speaks 1/255 units; `from_255` converts). Every
attack puts the model in eval mode and restores its mode afterwards; all randomness comes from an explicit
torch.Generator so that results are reproducible. `AttackSpec` describes an attack; `run_attack` runs it.
"""

from advneurons.attacks.black_box import nattack, spsa, spsa_gradient
from advneurons.attacks.core import (
    ExpectedLogits,
    QueryOracle,
    adaptive_note,
    attack_target,
    eval_mode,
    from_255,
    l2_norms,
    linf_norms,
    loss_gradient,
    margin,
    project_l2,
    project_linf,
)
from advneurons.attacks.ensemble import AutoAttackLog, autoattack
from advneurons.attacks.noise import CIFAR10C_GAUSSIAN_SIGMAS, gaussian_noise, severity_sigma, uniform_noise
from advneurons.attacks.spec import ATTACK_TYPES, PARAMETERS, THREAT_MODELS, AttackSpec
from advneurons.attacks.runner import attack_targets, run_attack
from advneurons.attacks.white_box import TARGET_RULES, choose_targets, cw_l2, cw_loss, fgsm, mifgsm, pgd_l2, pgd_linf, step_ll

__all__ = [
    "ATTACK_TYPES", "AttackSpec", "attack_targets", "run_attack", "AutoAttackLog", "ExpectedLogits", "adaptive_note", "attack_target", "CIFAR10C_GAUSSIAN_SIGMAS", "PARAMETERS", "QueryOracle", "TARGET_RULES",
    "THREAT_MODELS", "autoattack", "choose_targets", "cw_l2", "cw_loss", "eval_mode", "fgsm", "from_255",
    "gaussian_noise", "l2_norms", "linf_norms", "loss_gradient", "margin", "mifgsm", "nattack", "pgd_l2",
    "pgd_linf", "project_l2", "project_linf", "severity_sigma", "spsa", "spsa_gradient", "step_ll", "uniform_noise",
]
