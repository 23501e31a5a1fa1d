"""Training: vanilla, PGD adversarial training (PAT), adversarial logit pairing (ALP), single-step
adversarial training (NAT), ensemble adversarial training (EAT), and SNS fine-tuning of a trained model
(advneurons.training.sns).
Seeded, deterministic on CPU, resumable per epoch.

* PAT: L-inf PGD examples of the current model, clean and adversarial cross-entropy 1:1 in one batch.
* ALP (Kannan et al.): the PAT loss + ``alp_weight`` x mean squared L2 distance of clean and adversarial
  logits.
* NAT (Kurakin et al., "Adversarial machine learning at scale"): one-step Step-LL examples, each image
  with its own eps drawn from a half-normal of scale eps/2 truncated at eps, mixed 1:1 with clean images.
* EAT (Tramer et al., "Ensemble adversarial training"): NAT's examples and loss, but batch b's examples
  come in turn from the model in training and from each of the static, separately trained source models
  (the ``static`` trainings, one model per architecture of the run), which never change.
* SNS: see advneurons.training.sns; starts from the checkpoint of the ``base`` model.

All randomness (shuffling, augmentation, PGD random start) comes from one explicit generator whose state is
saved with each epoch's resume file, so a run killed mid-way and resumed ends with the same weights as an
uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from advneurons.evaluation.accuracy import clean_accuracy
from advneurons.models import checkpoint as ckpt_io
from advneurons.attacks import from_255, pgd_linf
from advneurons.data import load_split
from advneurons.models.architectures import DEFAULT_SITE, build_model, check_site
from advneurons.models.inference import FoldedShadow
from advneurons.runtime import (
    atomic_path,
    autocast,
    check_precision,
    device,
    fast_batch,
    fast_layout,
    generator,
    hold_on_device,
    metadata,
    model_device,
    write_json,
)
from advneurons.attacks import step_ll
from advneurons.training.sns import DEFAULT_LAMBDA, choose_channels

log = logging.getLogger(__name__)

METHODS = ("vanilla", "pat", "alp", "nat", "eat", "sns")
ADVERSARIAL = ("pat", "alp", "sns")  # methods that train on L-inf PGD examples
AUGMENTATIONS = ("none", "crop", "crop_flip")


@dataclass(frozen=True)
class TrainConfig:
    method: str = "vanilla"
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augmentation: str = "none"
    # PAT only; eps and step size in 1/255 units as in the config.
    eps: float = 8.0
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    clean_weight: float = 0.5
    # ALP
    alp_weight: float = 0.5
    # EAT: training names of the static, separately trained source models (one per architecture of the run).
    static: tuple[str, ...] | None = None
    # SNS fine-tuning (advneurons.training.sns); `base` names the training whose model is fine-tuned.
    base: str | None = None
    variant: str = "sen"
    sns_lambda: float | dict | None = None  # None: the papers' (VGG16 5, ResNet18 6); or arch -> lambda
    sns_layers: dict | None = None  # arch -> layer names; None: the papers'
    top_percent: float = 10.0
    select_images: int | None = 1000  # None: the whole training split, as the papers
    dyn_images: int = 200
    repeat: int = 0
    site: str = DEFAULT_SITE  # measurement site (models.SITES) of both the channel choice and L_sns
    precision: str = "fp32"  # "bf16": forward passes and the attacks of a step under bfloat16 autocast

    def __post_init__(self):
        check_precision(self.precision)
        if self.method not in METHODS:
            raise ValueError(f"unknown training method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {self.augmentation!r}; choose one of {', '.join(AUGMENTATIONS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")
        if self.method == "sns":
            from advneurons.training.sns import VARIANTS

            if self.variant not in VARIANTS:
                raise ValueError(f"unknown SNS variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
            check_site(self.site)
            if not self.base:
                raise ValueError("SNS fine-tuning needs `base`: the training whose model it starts from")
        if self.method != "eat" and self.static:
            raise ValueError("`static` (source models) is an EAT setting")
        if self.method == "eat" and not self.static:
            raise ValueError("EAT needs `static`: the trainings whose models also craft its adversarial examples")
        if self.static is not None and not isinstance(self.static, tuple):
            object.__setattr__(self, "static", tuple(self.static))  # hashable, and the same id from YAML lists

    def lam(self, arch: str) -> float:
        if self.sns_lambda is None:
            return DEFAULT_LAMBDA[arch]
        if isinstance(self.sns_lambda, dict):
            if arch not in self.sns_lambda:
                raise ValueError(f"sns_lambda has no value for architecture {arch!r}")
            return float(self.sns_lambda[arch])
        return float(self.sns_lambda)

    def layers_for(self, arch: str) -> list[str] | None:
        return None if self.sns_layers is None else self.sns_layers.get(arch)

    @classmethod
    def from_dict(cls, cfg: dict) -> "TrainConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**cfg)


def augment(x: torch.Tensor, kind: str, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding (and horizontal flip), drawn from `gen` (a CPU generator, so the
    draws are the same on every device); the crop is one gather on x's device, no per-image loop."""
    if kind == "none":
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (n, 1, 1, w)
    image = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[image, channel, rows, cols]
    if kind == "crop_flip":
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out


def nat_examples(model, x, eps: float, gen: torch.Generator) -> torch.Tensor:
    """Step-LL examples with a per-image eps ~ |N(0, (eps/2)^2)| truncated at eps (Kurakin et al.)."""

    scale = (torch.randn(len(x), generator=gen).abs() * eps / 2).clamp(max=eps)
    return step_ll(model, x, scale.view(-1, 1, 1, 1).to(x.device))


def _train_epoch(model, optimizer, scheduler, cfg: TrainConfig, x, y, gen, sns=None, static=(), crafter=None) -> dict:
    """One epoch. ``sns``: (StabilityLoss, lambda, frozen BatchNorm modules) for SNS fine-tuning.
    ``static``: EAT's static source models; batch b takes its examples from source b mod (1 + len(static)),
    source 0 being the model in training (Tramer et al.: alternate between the current and static models).
    ``crafter``: a :class:`~advneurons.models.inference.FoldedShadow` of the model, which PGD examples (PAT, ALP,
    SNS) are crafted on: the model's eval-mode function with BatchNorm folded, refreshed every batch."""
    model.train()
    if sns is not None:
        for bn in sns[2]:
            bn.eval()
    order = torch.randperm(len(x), generator=gen)
    eps = from_255(cfg.eps)
    step = None if cfg.step_size is None else from_255(cfg.step_size)
    dev = model_device(model)
    # Running totals stay on the device (float64, summed in the order a host loop would): no batch waits
    # for a device-to-host copy; the epoch's figures are read once at its end.
    totals = {key: torch.zeros((), dtype=torch.float64, device=dev) for key in ("loss", "correct", "adv_correct")}
    seen = 0
    sources = [model, *static]
    for batch, start in enumerate(range(0, len(x), cfg.batch_size)):
        idx = order[start : start + cfg.batch_size].to(x.device)
        # Augmentation draws from the CPU generator so runs are identical whatever the device.
        xb, yb = fast_batch(augment(x[idx], cfg.augmentation, gen).to(dev), model), y[idx].to(dev)
        with autocast(cfg.precision, dev):
            loss, clean_logits, adv_logits = _batch_loss(model, cfg, xb, yb, eps, step, gen, sns, sources, batch, totals,
                                                         crafter)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        totals["loss"] += loss.detach().double() * len(xb)
        totals["correct"] += (clean_logits.argmax(1) == yb).sum()
        if adv_logits is not None:
            totals["adv_correct"] += (adv_logits.argmax(1) == yb).sum()
        seen += len(xb)
    seen = max(1, seen)
    totals = {key: value.item() for key, value in totals.items()}
    out = {"train_loss": totals["loss"] / seen, "train_clean_acc": totals["correct"] / seen}
    if cfg.method != "vanilla":
        out["train_adv_acc"] = totals["adv_correct"] / seen
    if "sns_loss" in totals:
        out["train_sns_loss"] = totals["sns_loss"] / seen
    return out


def _batch_loss(model, cfg: TrainConfig, xb, yb, eps, step, gen, sns, sources, batch, totals, crafter=None):
    """(loss, clean logits, adversarial logits or None) of one batch of ``cfg.method``."""
    adv_logits = None
    # PGD crafts in eval mode: on the folded copy when there is one (the same function, faster)
    pgd_model = crafter.sync if crafter is not None else lambda: model
    if cfg.method == "sns":
        from advneurons.training.sns import sns_batch_loss

        x_adv = pgd_linf(pgd_model(), xb, yb, eps, cfg.steps, step, cfg.random_start, generator=gen)
        if sns is not None:  # pgd_linf leaves the model in train mode; keep frozen statistics fixed
            for bn in sns[2]:
                bn.eval()
        loss, clean_logits, adv_logits, l_sns = sns_batch_loss(
            model, sns[0], xb, yb, x_adv, sns[1], cfg.variant, cfg.clean_weight
        )
        totals.setdefault("sns_loss", torch.zeros_like(totals["loss"]))
        totals["sns_loss"] += l_sns.detach().double() * len(xb)
    elif cfg.method in ("pat", "alp", "nat", "eat"):
        if cfg.method == "nat":
            x_adv = nat_examples(model, xb, eps, gen)
        elif cfg.method == "eat":  # NAT's examples, crafted in turn by the model and each static model
            x_adv = nat_examples(sources[batch % len(sources)], xb, eps, gen)
        else:
            x_adv = pgd_linf(pgd_model(), xb, yb, eps, cfg.steps, step, cfg.random_start, generator=gen)
        # One forward over clean and adversarial halves: BatchNorm sees the 1:1 mixture.
        logits = model(torch.cat([xb, x_adv]))
        clean_logits, adv_logits = logits[: len(xb)], logits[len(xb) :]
        loss = cfg.clean_weight * F.cross_entropy(clean_logits, yb) + (1 - cfg.clean_weight) * F.cross_entropy(adv_logits, yb)
        if cfg.method == "alp":
            loss = loss + cfg.alp_weight * (clean_logits - adv_logits).pow(2).sum(1).mean()
    else:
        clean_logits = model(xb)
        loss = F.cross_entropy(clean_logits, yb)
    return loss, clean_logits, adv_logits


def _fingerprint(arch, dataset, width, num_classes, cfg: TrainConfig, seed, n_train) -> str:
    return json.dumps(
        {"arch": arch, "dataset": dataset, "width": width, "classes": num_classes, "train": asdict(cfg), "seed": seed, "n": n_train},
        sort_keys=True,
    )


def train_model(
    train_path: Path,
    val_path: Path | None,
    arch: str,
    dataset: str,
    width: float,
    cfg: TrainConfig,
    seed: int,
    model_out: Path,
    metrics_out: Path,
    metadata_out: Path,
    resume_path: Path,
    num_classes: int = 10,
    stop_after_epoch: int | None = None,
    base_path: Path | None = None,
    static_paths: list[Path] | None = None,
) -> dict:
    """Train one model and write its checkpoint, per-epoch metrics CSV and metadata JSON.

    After every epoch a resume file (`resume_path`) holds the full training state; a later call with the same
    settings continues from it. `stop_after_epoch` ends the call early, as a killed job would (for tests).
    `base_path`: the checkpoint SNS fine-tuning starts from (required for method "sns", refused otherwise).
    `static_paths`: EAT's static source models (required for method "eat", refused otherwise).
    """
    if (cfg.method == "sns") != (base_path is not None):
        raise ValueError("a base checkpoint is needed for SNS fine-tuning and only for it")
    if (cfg.method == "eat") != bool(static_paths):
        raise ValueError("static source checkpoints are needed for EAT and only for it")
    static = [_static_model(p, dataset, num_classes) for p in static_paths or []]  # fail before any training
    x_train, y_train = load_split(train_path)
    x_val, y_val = load_split(val_path) if val_path else (None, None)
    torch.manual_seed(seed)  # weight initialisation
    base_info, external = None, None
    if base_path is not None:
        base_model, base_ckpt = ckpt_io.load_model(base_path)
        if (base_ckpt.get("arch"), float(base_ckpt.get("width", -1))) != (arch, float(width)):
            raise ValueError(f"base checkpoint {base_path} is a {base_ckpt.get('arch')} of width {base_ckpt.get('width')}, "
                             f"not a {arch} of width {width}")
        external = base_ckpt.get("external")  # an external model (models.external): fine-tuned as it is
        model = base_model.to(device()) if external else build_model(arch, dataset, width, num_classes).to(device())
        if not external:
            model.load_state_dict(base_model.state_dict())
        base_info = {"path": str(base_path), "training": (base_ckpt.get("meta") or {}).get("params", {}).get("training")}
    else:
        model = build_model(arch, dataset, width, num_classes).to(device())
    fast_layout(model)
    # the training split on the device when it fits (no per-batch host copies); the generator stays on the CPU
    x_train, y_train = hold_on_device((x_train, y_train), model_device(model))
    gen = generator(seed + 1)
    sns = None
    if cfg.method == "sns":
        from advneurons.training.sns import freeze_below, selected_layers

        layers = selected_layers(model, arch, cfg.layers_for(arch), cfg.site)
        frozen_bn = freeze_below(model, next(iter(layers)))
        sns = [None, cfg.lam(arch), frozen_bn, layers]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.25, anneal_strategy="cos"
    )
    fingerprint = _fingerprint(arch, dataset, width, num_classes, cfg, seed, len(x_train))
    if base_path is not None:  # a resume file belongs to one base model
        fingerprint += ckpt_io.file_digest(base_path)
    for path in static_paths or []:  # and to one set of static source models
        fingerprint += ckpt_io.file_digest(path)
    history: list[dict] = []
    channels = None
    first_epoch = 1
    resume_path = Path(resume_path)
    if resume_path.exists():
        try:
            state = ckpt_io.safe_load(resume_path)
        except ckpt_io.CheckpointError as exc:
            log.warning("ignoring unusable resume file: %s", exc)
            state = None
        if state is not None and state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])  # moves the momentum buffers to the model's device
            scheduler.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            history = list(state["history"])
            channels = state.get("channels")
            first_epoch = int(state["epoch"]) + 1
            log.info("resuming from epoch %d of %d (%s)", first_epoch, cfg.epochs, resume_path)
        elif state is not None:
            log.warning("resume file %s was written with other settings; starting over", resume_path)

    # Made before any epoch, so that it carries none of the hooks an epoch registers (SNS's stability loss).
    crafter = FoldedShadow.of(model) if cfg.method in ("sns", "pat", "alp") else None
    epochs = tqdm(range(first_epoch, cfg.epochs + 1), desc=f"train {arch}/{cfg.method}", initial=first_epoch - 1, total=cfg.epochs)
    for epoch in epochs:
        started = time.perf_counter()
        row = {"epoch": epoch, "lr": scheduler.get_last_lr()[0]}
        if sns is not None:
            if channels is None or cfg.variant == "dyn":
                channels = _sns_channels(model, sns[3], cfg, x_train, y_train, gen)
            from advneurons.training.sns import StabilityLoss

            with StabilityLoss(sns[3], channels) as stability:
                sns[0] = stability
                row.update(_train_epoch(model, optimizer, scheduler, cfg, x_train, y_train, gen, sns, crafter=crafter))
        else:
            row.update(_train_epoch(model, optimizer, scheduler, cfg, x_train, y_train, gen, static=static,
                                    crafter=crafter))
        if x_val is not None and len(x_val):
            row["val_clean_acc"] = clean_accuracy(model, x_val, y_val, batch_size=500)
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        log.info("epoch %s", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        state = {
            "fingerprint": fingerprint,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": gen.get_state(),
            "history": history,
            "channels": channels,
        }
        with atomic_path(resume_path) as tmp:
            torch.save(state, tmp)
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg.epochs:
            return {"stopped_after_epoch": epoch}

    params = {"arch": arch, "dataset": dataset, "width": width, "num_classes": num_classes, "training": asdict(cfg)}
    extra = {}
    if sns is not None:
        extra = {"base": base_info, "sns_lambda": sns[1], "sns_layers": list(sns[3]), "sns_site": cfg.site,
                 "frozen_parameters": sum(p.numel() for p in model.parameters() if not p.requires_grad),
                 "stabilised_channels": {n: c.tolist() for n, c in channels.items()}}
    if static:
        extra["static_models"] = [{"path": str(p), "arch": m.arch_name} for p, m in zip(static_paths, static)]
    meta = metadata("train", params, seed=seed, n_train=len(x_train), final=history[-1] if history else {}, **extra)
    ckpt_io.save_model(model.cpu(), model_out, arch, dataset, width, num_classes, meta, external=external)
    with atomic_path(metrics_out) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    write_json(meta, metadata_out)
    resume_path.unlink(missing_ok=True)
    return meta


def _static_model(path: Path, dataset: str, num_classes: int) -> nn.Module:
    """A frozen, eval-mode source model for EAT, checked against the dataset and classes of the run."""
    model, ckpt = ckpt_io.load_model(path)
    if (ckpt.get("dataset"), ckpt.get("num_classes")) != (dataset, num_classes):
        raise ValueError(f"static model {path} was trained on {ckpt.get('dataset')} with {ckpt.get('num_classes')} "
                         f"classes, not {dataset} with {num_classes}")
    if ckpt.get("defense"):
        raise ValueError(f"static model {path} carries a defense ({ckpt['defense'].get('type')}); EAT needs a trained model")
    model.requires_grad_(False)
    model.arch_name = ckpt["arch"]
    return model.to(device()).eval()


def _sns_channels(model, layers, cfg: TrainConfig, x, y, gen):
    """The channels SNS stabilises: chosen once before the first epoch (from the base model's PGD pairs
    on ``select_images`` training images, all of them if None), or each epoch from ``dyn_images`` images for
    ``dyn``; measured at the outputs of ``layers``, the modules of the SNS site."""

    n = cfg.dyn_images if cfg.variant == "dyn" else cfg.select_images
    pick = torch.randperm(len(x), generator=gen)[:n]  # a slice past the end (or to None) takes every image
    if cfg.variant == "rand":  # the repeat index seeds the random sets
        rand_gen = generator(10_000 + cfg.repeat)
        return choose_channels(model, layers, "rand", cfg.top_percent, x[:0], y[:0], 0.0, 1, None, rand_gen)
    step = None if cfg.step_size is None else from_255(cfg.step_size)
    dev = model_device(model)
    return choose_channels(model, layers, cfg.variant, cfg.top_percent, x[pick].to(dev), y[pick].to(dev),
                           from_255(cfg.eps), cfg.steps, step, gen)
