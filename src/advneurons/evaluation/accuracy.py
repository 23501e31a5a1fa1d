"""Accuracy of a model on clean images: the one helper every stage uses (training's validation, tables,
defenses, suppression, PSN analyses)."""

from __future__ import annotations

import torch
from torch import nn

from advneurons.attacks import eval_mode
from advneurons.runtime import model_device


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image: is it classified correctly? (bool, on the CPU)"""
    return (model(x).argmax(dim=1) == y).cpu()


def _on_model_device(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    dev = model_device(model)
    return x.to(dev), y.to(dev)


def clean_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Per image: is the unattacked image classified correctly? (in eval mode; the model's mode is restored)"""
    with eval_mode(model):
        parts = [_correct(model, *_on_model_device(model, images[i : i + batch_size], labels[i : i + batch_size]))
                 for i in range(0, len(labels), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)


def clean_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of images classified correctly; NaN for no images (an accuracy of nothing is undefined)."""
    if len(labels) == 0:
        return float("nan")
    return float(clean_correct(model, images, labels, batch_size).sum()) / len(labels)
