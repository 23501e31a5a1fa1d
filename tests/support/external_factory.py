"""A small network from "outside" the pipeline (an external model in tests and in the tiny workflow run): its own
module names, a conv without BatchNorm read through a functional ReLU, a ReLU module shared by two layers, and a
Linear head on pooled features, so that layer discovery meets each case it must handle."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        self.block_a = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.norm_a = nn.BatchNorm2d(2 * width)
        self.block_b = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.norm_b = nn.BatchNorm2d(2 * width)
        self.shared = nn.ReLU()  # applied after norm_a and after norm_b
        self.plain = nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1)  # no BatchNorm; F.relu after it
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = F.max_pool2d(self.shared(self.norm_a(self.block_a(x))), 2)
        x = self.shared(self.norm_b(self.block_b(x)))
        x = F.relu(self.plain(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def small_cnn(width: int = 8, num_classes: int = 10) -> SmallCNN:
    return SmallCNN(width, num_classes)


MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def write_trained_checkpoint(path: Path, width: int = 8, epochs: int = 10, seed: int = 0) -> Path:
    """Train a SmallCNN briefly on the digits training split (its own loop, normalising as an outside user would;
    about 70-80% test accuracy in ~15 s) and save it the way such users do: torch.save({"state_dict": ...}), keys
    prefixed "module." by DataParallel."""
    from advneurons.data import prepare_digits

    torch.manual_seed(seed)
    train = prepare_digits(0.2, 0.1, 0)["train"]
    x, y = torch.as_tensor(train.images), torch.as_tensor(train.labels)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    model = small_cnn(width)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        for i in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            F.cross_entropy(model((x[i] - mean) / std), y[i]).backward()
            opt.step()
    model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": epochs}, path)
    return path
