"""Shared test helper: BatchNorm layers with non-trivial statistics, so bounds and Jacobians are not trivial."""

import torch
from torch import nn


def with_bn_stats(model: nn.Module, sample, seed: int = 0) -> nn.Module:
    """Randomise every BatchNorm's affine parameters, run three training-mode batches drawn by
    `sample(generator)` to set running statistics, and return the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
        model.train()
        for _ in range(3):
            model(sample(gen))
    return model.eval()
