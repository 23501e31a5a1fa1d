"""The one way tests build a tiny model: the workflow's own architectures at width 1/16 on digits-shaped input,
optionally with BatchNorm layers far from the identity (so bounds, Jacobians and BN-site readings are not trivial)."""

import torch
from torch import nn

from advneurons.models.architectures import build_model

TINY_WIDTH = 0.0625  # 1/16 of the papers' channel counts: VGG16 conv1 has 4 channels


def tiny_model(arch: str = "vgg16") -> nn.Module:
    """A freshly initialised `arch` (vgg16 / resnet18) for 10 classes, in training mode like build_model's."""
    return build_model(arch, "digits", width=TINY_WIDTH)


def random_bn_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters (eval mode), so BN is far from the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5, generator=gen)
                m.running_var.uniform_(0.2, 3.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
    return model.eval()


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
