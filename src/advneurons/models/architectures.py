"""CIFAR-style VGG16-BN and ResNet18 with a width multiplier.

Every model takes images in [0, 1] and normalises them itself, so attacks work in pixel space.
Layers carry the names the papers use (VGG: conv1..conv13, fc; ResNet: conv1, l1b1c1..l4b2c2, fc),
and `model.layers(site)` maps those names to modules, so analyses address layers by name. The ReLU after
each scored layer is a module of its own so that hooks can read activations after it.

A layer's output can be read at three measurement sites (`SITES`): the bias-free conv output ("conv"),
its BatchNorm output ("bn") or the ReLU after it ("relu"). The names stay the same at every site; only
the module whose output is read changes. The conv output has no fixed scale: BatchNorm divides any
per-channel scale of the conv weights away, so distances measured there (neuron sensitivity, SNS's
stability loss) depend on an arbitrary weight scale. "bn" is therefore the default measurement site.

No Dropout anywhere: the papers' CIFAR nets need none and auto_LiRPA 0.3 cannot parse it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

ARCHITECTURES = ("vgg16", "resnet18")

# (mean, std) per dataset, applied inside the model.
NORMALISATION = {
    "digits": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

_VGG16_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

SITES = ("conv", "bn", "relu")
DEFAULT_SITE = "bn"


def check_site(site: str) -> str:
    """`site` if it is one of `SITES`, else a ValueError naming them."""
    if site not in SITES:
        raise ValueError(f"unknown measurement site {site!r}; choose one of {', '.join(SITES)}")
    return site


def layer_channels(model: nn.Module) -> "OrderedDict[str, int]":
    """Channel count of every named layer (output units for fc); the same at every site."""
    return OrderedDict(
        (name, module.out_channels if isinstance(module, nn.Conv2d) else module.out_features)
        for name, module in model.layers("conv").items()
    )


def scaled(channels: int, width: float) -> int:
    """Channel count after the width multiplier, at least one channel."""
    return max(1, int(round(channels * width)))


class Normalize(nn.Module):
    """(x - mean) / std with per-channel constants held as buffers."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class VGG16(nn.Module):
    """VGG16 with BatchNorm for 32x32 inputs: 13 conv layers, 5 max-pools, one linear layer."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, mean=(0.5,) * 3, std=(0.5,) * 3):
        super().__init__()
        self.normalize = Normalize(mean, std)
        blocks: "OrderedDict[str, nn.Module]" = OrderedDict()
        in_ch, conv_i, pool_i = 3, 0, 0
        for item in _VGG16_PLAN:
            if item == "M":
                pool_i += 1
                blocks[f"pool{pool_i}"] = nn.MaxPool2d(2, 2)
                continue
            conv_i += 1
            out_ch = scaled(item, width)
            blocks[f"conv{conv_i}"] = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
            blocks[f"bn{conv_i}"] = nn.BatchNorm2d(out_ch)
            blocks[f"relu{conv_i}"] = nn.ReLU()
            in_ch = out_ch
        self.features = nn.Sequential(blocks)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)
        self.penultimate_dim = in_ch

    def forward(self, x):
        return self.fc(self.flatten(self.features(self.normalize(x))))

    def layers(self, site: str = "conv") -> "OrderedDict[str, nn.Module]":
        """convK -> features.convK, features.bnK or features.reluK by `site`; fc -> fc at every site.

        The default is the conv modules themselves, for callers that need their weights or channel counts.
        """
        check_site(site)
        named = OrderedDict((f"conv{i}", getattr(self.features, f"{site}{i}")) for i in range(1, 14))
        named["fc"] = self.fc
        return named

    def relus(self) -> "OrderedDict[str, nn.Module]":
        return OrderedDict((f"relu{i}", getattr(self.features, f"relu{i}")) for i in range(1, 14))

    def penultimate(self) -> nn.Module:
        """Module whose output is the penultimate representation (pool5, flattened)."""
        return self.flatten


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(out_ch),
                )
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet18 for 32x32 inputs (3x3 stem, no stem pooling), global average pool, one linear layer."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, mean=(0.5,) * 3, std=(0.5,) * 3):
        super().__init__()
        self.normalize = Normalize(mean, std)
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu1 = nn.ReLU()
        in_ch = stem
        for stage, (base, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
            out_ch = scaled(base, width)
            blocks = nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1))
            setattr(self, f"layer{stage}", blocks)
            in_ch = out_ch
        # Fixed-size average pool rather than adaptive pooling: auto_LiRPA 0.3 parses AvgPool2d.
        self.avgpool = nn.AvgPool2d(4)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)
        self.penultimate_dim = in_ch

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(self.flatten(self.avgpool(out)))

    def blocks(self):
        for stage in range(1, 5):
            for b, block in enumerate(getattr(self, f"layer{stage}"), start=1):
                yield f"l{stage}b{b}", block

    def layers(self, site: str = "conv") -> "OrderedDict[str, nn.Module]":
        """The named layers' modules at `site`; the default is the conv modules themselves, for callers that
        need their weights or channel counts.

        conv1 (stem) -> conv1 / bn1 / relu1; l{s}b{b}c1 -> block.conv1 / bn1 / relu1; l{s}b{b}c2 ->
        block.conv2 / bn2 / relu2, where relu2 acts after the residual add, so the relu site of c2 is the
        block's output (shortcut included); l{s}b1sc (the shortcut's 1x1 projection) -> shortcut.conv /
        shortcut.bn / shortcut.bn, as the projection has no ReLU of its own (its BatchNorm output enters the
        add); fc -> fc at every site.
        """
        check_site(site)
        named = OrderedDict(conv1=getattr(self, f"{site}1"))
        for prefix, block in self.blocks():
            named[f"{prefix}c1"] = getattr(block, f"{site}1")
            named[f"{prefix}c2"] = getattr(block, f"{site}2")
            if not isinstance(block.shortcut, nn.Identity):
                # Not named in the papers; "sc" marks the 1x1 projection of the shortcut.
                named[f"{prefix}sc"] = block.shortcut.conv if site == "conv" else block.shortcut.bn
        named["fc"] = self.fc
        return named

    def relus(self) -> "OrderedDict[str, nn.Module]":
        named = OrderedDict(relu1=self.relu1)
        for prefix, block in self.blocks():
            named[f"{prefix}r1"] = block.relu1
            named[f"{prefix}r2"] = block.relu2
        return named

    def penultimate(self) -> nn.Module:
        """Module whose output is the penultimate representation (global average pool, flattened)."""
        return self.flatten


def build_model(arch: str, dataset: str, width: float = 1.0, num_classes: int = 10) -> nn.Module:
    """Build an untrained model by architecture name, normalising with the dataset's statistics."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if dataset not in NORMALISATION:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(NORMALISATION)}")
    if not width > 0:
        raise ValueError(f"width multiplier must be positive, got {width!r}")
    mean, std = NORMALISATION[dataset]
    cls = VGG16 if arch == "vgg16" else ResNet18
    return cls(num_classes=num_classes, width=width, mean=mean, std=std)
