"""Models prepared for jobs that only run them in eval mode (attacks, accuracy, hooks on ReLU outputs): BatchNorm
folded into the convolution before it, parameters frozen, on the device, in the fastest layout.

In eval mode a BatchNorm is an affine map per channel, so conv -> BN equals one convolution with rescaled
weights and a bias: the same function up to float rounding, with one layer fewer to run forward and backward.
Frozen parameters spare a backward pass every weight gradient. On this project's AVX2 CPU (2026-12-04, width
1/8, one thread, `bench/fold_speed.py`) a forward pass ran 1.4x, an input-gradient step 1.2-1.3x, a PGD-10
attack 1.4-1.6x and a full backward pass (FAB's) 1.8x faster; on a GPU the memory-bound BatchNorm kernels go too.
Only the built-in architectures are folded, whose conv/BN pairs their `layers()` name; an external model is left
as it is. A folded model has no BatchNorm left, so it must never be trained: :func:`for_attacks` puts it in eval
mode and marks it, and :func:`fold_batchnorm` refuses a model in training mode. Hooks on ReLU outputs or on the
(now identity) BatchNorm slots see the same values as before; hooks on convolution outputs would not.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights

from advneurons.models.architectures import VGG16, ResNet18
from advneurons.runtime import device, fast_layout

log = logging.getLogger(__name__)

FOLDED = "batchnorm_folded"  # attribute set on a model whose BatchNorms were folded: the count of pairs


def _replace(root: nn.Module, target: nn.Module, replacement: nn.Module) -> None:
    for module in root.modules():
        for child_name, child in module.named_children():
            if child is target:
                setattr(module, child_name, replacement)
                return
    raise LookupError(f"{type(target).__name__} not found in the model")


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """(layer name, convolution, the BatchNorm that reads only its output) of every built-in architecture
    inside `model` (a defended model wraps or edits one); none for any other model."""
    pairs = []
    for net in model.modules():
        if not isinstance(net, (VGG16, ResNet18)):
            continue
        convs, norms = net.layers("conv"), net.layers("bn")
        for layer, conv in convs.items():
            norm = norms[layer]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                pairs.append((layer, conv, norm))
    return pairs


def fold_batchnorm(model: nn.Module) -> int:
    """Fold each BatchNorm of a built-in architecture into its convolution, in place: the convolution gets
    the BatchNorm's scale in its weights and its shift as a bias, the BatchNorm becomes an identity. Returns
    the number of pairs folded (0 for a model with none). The model must be in eval mode: training uses
    batch statistics, which no folded weight can reproduce."""
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode: a training model's BatchNorm uses batch "
                         "statistics")
    pairs = conv_bn_pairs(model)
    for _, conv, norm in pairs:
        fused = fuse_conv_bn_eval(conv, norm)
        fused.requires_grad_(conv.weight.requires_grad)
        _replace(model, conv, fused)
        _replace(model, norm, nn.Identity())
    setattr(model, FOLDED, getattr(model, FOLDED, 0) + len(pairs))
    return len(pairs)


def for_attacks(model: nn.Module) -> nn.Module:
    """`model` (as :func:`advneurons.models.checkpoint.load_model` returns it) ready for a job that only
    attacks and evaluates it: in eval mode, its parameters frozen, on the job's device, BatchNorm folded, in the
    fastest layout.
    Logs what was folded; :data:`FOLDED` on the model holds the count for the job's metadata."""
    model.eval()
    # No job that attacks a model trains it: without parameter gradients, a backward pass that is not asked
    # for input gradients only (FAB's `backward()`) skips every weight gradient.
    model.requires_grad_(False)
    model.to(device())
    with torch.no_grad():
        folded = fold_batchnorm(model)
    if folded:
        log.info("BatchNorm folded into %d convolutions (eval-only job)", folded)
    return fast_layout(model)


class FoldedShadow:
    """A folded, frozen copy of a model in training, for crafting its adversarial examples.

    Adversarial training crafts its examples in eval mode (`attacks.pgd_linf`), where a BatchNorm is the affine
    map of its running statistics, so a folded copy computes the same function faster. The weights change every
    step, so :meth:`sync` refolds the copy from the model's current weights and statistics (in place, with
    torch's own fusion formula, bit for bit what :func:`fold_batchnorm` of a fresh copy gives) and returns it.
    The model itself is never touched. `FoldedShadow.of` gives None for a model with nothing to fold.
    """

    def __init__(self, model: nn.Module):
        names = {id(module): name for name, module in model.named_modules()}
        pairs = [(names[id(conv)], names[id(norm)]) for _, conv, norm in conv_bn_pairs(model)]
        shadow = copy.deepcopy(model).eval().requires_grad_(False)
        with torch.no_grad():
            fold_batchnorm(shadow)
        self.shadow = fast_layout(shadow)
        self._folded = [(model.get_submodule(conv), model.get_submodule(norm), shadow.get_submodule(conv))
                        for conv, norm in pairs]
        folded_modules = {name for pair in pairs for name in pair}
        sources = model.state_dict(keep_vars=True)
        targets = shadow.state_dict(keep_vars=True)
        # every other parameter and buffer (the classifier, Normalize's constants, unfolded layers), by name
        self._copied = [(sources[key], targets[key]) for key in sources
                        if key.rpartition(".")[0] not in folded_modules]

    @classmethod
    def of(cls, model: nn.Module) -> "FoldedShadow | None":
        return cls(model) if conv_bn_pairs(model) else None

    @torch.no_grad()
    def sync(self) -> nn.Module:
        """The copy, refolded from the model as it is now."""
        for conv, norm, fused in self._folded:
            weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                                norm.eps, norm.weight, norm.bias)
            fused.weight.copy_(weight)
            fused.bias.copy_(bias)
        for source, target in self._copied:
            target.copy_(source)
        return self.shadow
