"""Vanilla and PGD adversarial training (PAT), seeded, deterministic on CPU, resumable per epoch.

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

from . import checkpoint as ckpt_io
from .attacks import from_255, pgd_linf
from .data import load_split
from .models import build_model
from .runtime import atomic_path, device, generator, metadata, model_device, write_json

log = logging.getLogger(__name__)

METHODS = ("vanilla", "pat")
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

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown training method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {self.augmentation!r}; choose one of {', '.join(AUGMENTATIONS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")

    @classmethod
    def from_dict(cls, cfg: dict) -> "TrainConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**cfg)


def augment(x: torch.Tensor, kind: str, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding (and horizontal flip), drawn from `gen`."""
    if kind == "none":
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if kind == "crop_flip":
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    was_training = model.training
    model.eval()
    dev = model_device(model)
    correct = sum(
        (model(x[i : i + batch_size].to(dev)).argmax(1).cpu() == y[i : i + batch_size]).sum().item()
        for i in range(0, len(x), batch_size)
    )
    model.train(was_training)
    return correct / max(1, len(x))


def _train_epoch(model, optimizer, scheduler, cfg: TrainConfig, x, y, gen) -> dict:
    model.train()
    order = torch.randperm(len(x), generator=gen)
    eps = from_255(cfg.eps)
    step = None if cfg.step_size is None else from_255(cfg.step_size)
    totals = {"loss": 0.0, "correct": 0, "adv_correct": 0, "seen": 0}
    for start in range(0, len(x), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        # Augmentation draws from the CPU generator so runs are identical whatever the device.
        dev = model_device(model)
        xb, yb = augment(x[idx], cfg.augmentation, gen).to(dev), y[idx].to(dev)
        if cfg.method == "pat":
            x_adv = pgd_linf(model, xb, yb, eps, cfg.steps, step, cfg.random_start, generator=gen)
            # One forward over clean and adversarial halves: BatchNorm sees the 1:1 mixture.
            logits = model(torch.cat([xb, x_adv]))
            clean_logits, adv_logits = logits[: len(xb)], logits[len(xb) :]
            loss = cfg.clean_weight * F.cross_entropy(clean_logits, yb) + (1 - cfg.clean_weight) * F.cross_entropy(adv_logits, yb)
            totals["adv_correct"] += (adv_logits.argmax(1) == yb).sum().item()
        else:
            clean_logits = model(xb)
            loss = F.cross_entropy(clean_logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        totals["loss"] += loss.item() * len(xb)
        totals["correct"] += (clean_logits.argmax(1) == yb).sum().item()
        totals["seen"] += len(xb)
    seen = max(1, totals["seen"])
    out = {"train_loss": totals["loss"] / seen, "train_clean_acc": totals["correct"] / seen}
    if cfg.method == "pat":
        out["train_adv_acc"] = totals["adv_correct"] / seen
    return out


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
) -> dict:
    """Train one model and write its checkpoint, per-epoch metrics CSV and metadata JSON.

    After every epoch a resume file (`resume_path`) holds the full training state; a later call with the same
    settings continues from it. `stop_after_epoch` ends the call early, as a killed job would (for tests).
    """
    x_train, y_train = load_split(train_path)
    x_val, y_val = load_split(val_path) if val_path else (None, None)
    torch.manual_seed(seed)  # weight initialisation
    model = build_model(arch, dataset, width, num_classes).to(device())
    gen = generator(seed + 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.25, anneal_strategy="cos"
    )
    fingerprint = _fingerprint(arch, dataset, width, num_classes, cfg, seed, len(x_train))
    history: list[dict] = []
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
            first_epoch = int(state["epoch"]) + 1
            log.info("resuming from epoch %d of %d (%s)", first_epoch, cfg.epochs, resume_path)
        elif state is not None:
            log.warning("resume file %s was written with other settings; starting over", resume_path)

    epochs = tqdm(range(first_epoch, cfg.epochs + 1), desc=f"train {arch}/{cfg.method}", initial=first_epoch - 1, total=cfg.epochs)
    for epoch in epochs:
        started = time.perf_counter()
        row = {"epoch": epoch, "lr": scheduler.get_last_lr()[0]}
        row.update(_train_epoch(model, optimizer, scheduler, cfg, x_train, y_train, gen))
        if x_val is not None and len(x_val):
            row["val_clean_acc"] = accuracy(model, x_val, y_val)
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
        }
        with atomic_path(resume_path) as tmp:
            torch.save(state, tmp)
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg.epochs:
            return {"stopped_after_epoch": epoch}

    params = {"arch": arch, "dataset": dataset, "width": width, "num_classes": num_classes, "training": asdict(cfg)}
    meta = metadata("train", params, seed=seed, n_train=len(x_train), final=history[-1] if history else {})
    ckpt_io.save_model(model.cpu(), model_out, arch, dataset, width, num_classes, meta)
    with atomic_path(metrics_out) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    write_json(meta, metadata_out)
    resume_path.unlink(missing_ok=True)
    return meta
