"""AutoAttack through the `pyautoattack` package (the authors' reference code, packaged for PyPI).

The "standard" version runs APGD-CE, APGD-T (9 targets), FAB-T (9 targets) and Square (5000 queries), each
on the images the previous ones did not fool. AutoAttack seeds torch's global RNG itself; the call runs
inside torch.random.fork_rng so the caller's global RNG state is untouched, and the seed is drawn from the
caller's generator.

Besides the images, AutoAttack knows the robust accuracy after each of its stages and runs checks whose
warnings flag an unreliable evaluation (above all: the black-box Square attack finding adversarial examples
the gradient-based stages missed, a sign of gradient masking). :class:`AutoAttackLog` keeps both, summed
over the batches of an evaluation, so that tables and claims can show them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from advneurons.attacks.core import eval_mode

NORMS = {"linf": "Linf", "l2": "L2"}
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


@dataclass
class AutoAttackLog:
    """Robust images after each AutoAttack stage and the warnings of its checks, over all batches.

    ``robust_after`` maps "clean" and each stage that ran to the number of images still classified
    correctly after it; a stage skipped in a batch (nothing left to attack) counts that batch's last count.
    ``warnings`` holds each distinct warning message once, with the number of batches that raised it.
    """

    n_images: int = 0
    robust_after: dict[str, int] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)

    def add_batch(self, n: int, accuracy_after: dict[str, float], stages: list[str], warnings: list[str]) -> None:
        last = None
        for stage in ["clean", *stages]:
            if stage in accuracy_after:
                last = int(round(accuracy_after[stage] * n))
            if last is not None:
                self.robust_after[stage] = self.robust_after.get(stage, 0) + last
        self.n_images += n
        for message in warnings:
            self.warnings[message] = self.warnings.get(message, 0) + 1

    def accuracy_after_pct(self) -> dict[str, float]:
        return {k: round(100.0 * v / self.n_images, 2) for k, v in self.robust_after.items()} if self.n_images else {}

    def square_drop_pct(self) -> float | None:
        """Percentage points of robust accuracy that Square removed after the gradient-based stages (AutoAttack's
        own gradient-masking check, over the whole evaluation); None if Square did not run."""
        after = self.accuracy_after_pct()
        if "square" not in after:
            return None
        before = [v for k, v in after.items() if k not in ("clean", "square")]
        return round(min(before) - after["square"], 2) if before else None

    def to_dict(self) -> dict:
        return {"n_images": self.n_images, "robust_accuracy_after_pct": self.accuracy_after_pct(),
                "square_drop_pct": self.square_drop_pct(),
                "warnings": [f"{m} ({k} of the batches)" if k > 1 else m for m, k in self.warnings.items()]}


def _stage_progress(record: logging.LogRecord) -> bool:
    """AutoAttack's own log, reduced to what a reader of the job's log wants: its warnings, and one line as
    each stage starts and ends (a stage can run for minutes); its per-batch debug chatter is dropped."""
    message = record.getMessage()
    return record.levelno >= logging.WARNING or message.startswith(
        ("running ", "robust accuracy after ", "initial accuracy"))


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands back a contiguous gradient: AutoAttack reshapes input gradients with
    .view(), which fails on the channels_last gradients a channels_last model (runtime.fast_layout) returns."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class _ContiguousInputs(nn.Module):
    """The model as AutoAttack sees it: contiguous inputs and input gradients, whatever the model's layout."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_ContiguousGrad.apply(x))


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
    log: AutoAttackLog | None = None,
    iterations: int | None = None,
    queries: int | None = None,
    stages: list[str] | None = None,
) -> torch.Tensor:
    """Perturbed images from AutoAttack (`attacks` picks a subset, e.g. ["apgd-ce"], with version="custom").

    `apgd_restarts` overrides APGD-CE's restart count. The authors' code runs APGD-CE with 1 restart in the
    standard version but keeps its default of 5 in a custom one, so a custom APGD-CE equals the standard
    ensemble's first stage only with `apgd_restarts=1` (and the same seed). `log`, when given, receives
    this batch's robust accuracy after each stage and the warnings of AutoAttack's checks. `iterations` (APGD-CE,
    APGD-T and FAB-T) and `queries` (Square), when given, replace the version's counts (standard: 100 and 5000).
    `stages` (standard version only) runs a subset of its four stages with everything else as the version sets it:
    each stage keeps its seed and settings and attacks the images the stages before it left, so leaving out a
    stage that fools no image changes no other stage's result."""
    try:
        from pyautoattack import AutoAttack
        from pyautoattack import autoattack as aa_module
    except ImportError as exc:  # pragma: no cover - the package is a dependency
        raise ImportError("AutoAttack needs the 'pyautoattack' package: pip install pyautoattack") from exc
    if norm not in NORMS:
        raise ValueError(f"AutoAttack norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if stages is not None and (version != "standard" or not stages or set(stages) - set(STANDARD_ATTACKS)):
        raise ValueError(f"AutoAttack stages are a non-empty subset of the standard version's "
                         f"{', '.join(STANDARD_ATTACKS)}; got {stages} with version {version!r}")
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else 0
    aa_logger = logging.getLogger("auto-attack")
    level = aa_logger.level
    aa_logger.setLevel(logging.DEBUG)  # its stage progress is logged at debug level; _stage_progress filters
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    collect, accuracy_after = _Collect(), {}
    checks = aa_module.checks
    original_check = checks.check_square_sr

    def record_stages(acc_dict, *args, **kwargs):  # AutoAttack passes its robust accuracy after each stage here
        accuracy_after.update(acc_dict)
        return original_check(acc_dict, *args, **kwargs)

    aa_logger.addHandler(collect)
    aa_logger.addFilter(_stage_progress)
    checks.check_square_sr = record_stages
    try:
        with eval_mode(model), torch.random.fork_rng(devices=devices):
            adversary = AutoAttack(
                _ContiguousInputs(model), eps=eps, norm=NORMS[norm], version=version, seed=seed, device=x.device,
                attacks=attacks if version == "custom" else None,
            )
            if apgd_restarts is not None:
                adversary.apgd.n_restarts = int(apgd_restarts)
            if iterations is not None:
                for stage in (adversary.apgd, adversary.apgd_targeted, adversary.fab):
                    stage.n_iter = int(iterations)
            if queries is not None:
                adversary.square.n_queries = int(queries)
            if stages is not None:  # after the version has set every stage's counts, targets and restarts
                adversary.attacks_to_run = [a for a in STANDARD_ATTACKS if a in stages]
            x_adv, _ = adversary.run_standard_evaluation(x.detach().contiguous(), y, batch_size=len(x))
    finally:
        checks.check_square_sr = original_check
        aa_logger.removeHandler(collect)
        aa_logger.removeFilter(_stage_progress)
        aa_logger.setLevel(level)
    if log is not None:
        log.add_batch(len(x), accuracy_after, list(adversary.attacks_to_run), collect.messages)
    return x_adv.detach().clamp(0.0, 1.0)
