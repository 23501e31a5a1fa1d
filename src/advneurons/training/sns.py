"""Sensitive neuron stabilizing (SNS) fine-tuning (TIP Eq 12-13, Algorithm 1; docs/methods.md, defenses).

A trained model (the *base*, normally the vanilla one) is fine-tuned on

    L = L_adv(x, x', y) + lambda * L_sns,   L_sns = sum over selected layers l, sensitive channels m of
                                                    ||F_l^m(x) - F_l^m(x')||_1 / dim(F_l^m)

(averaged over the batch), where x' is an L-inf PGD example of the current model, F_l^m channel m of layer l
read at the measurement site ``site`` (`models.SITES`, default the BatchNorm output), and L_adv the PAT loss
(clean and adversarial cross-entropy, 1:1 in one BatchNorm batch). The sensitive channels are chosen by
neuron sensitivity measured at the same site, so that the channels stabilised are the ones found sensitive
there. Only the selected layers and everything after them are trained; the layers below stay frozen
(weights and BatchNorm statistics).

Why the BatchNorm output is the default site: the convs have no bias and feed a BatchNorm, so their raw
outputs can be shrunk at will; in training mode BatchNorm undoes the scale, so shrinking conv weights lowers
L_sns at the conv site at no cost to the training loss, but at inference the running statistics lag and the
model breaks. On digits at eps 32/255 with lambda 5, stabilising the conv outputs sent both architectures
to chance accuracy (measured: 10% / 16.7% clean). ``site="conv"`` is kept to reproduce that comparison.

Which channels are stabilised (``variant``):

* ``sen``: the top ``top_percent``% most sensitive channels of each selected layer, chosen once from the
  base model's PGD pairs on ``select_images`` training images (the paper's method);
* ``all``: every channel of the selected layers;
* ``rand``: ``top_percent``% random channels per layer (seeded by ``repeat``; the paper averages 3);
* ``dyn``: the sensitive set re-chosen at the start of every epoch from ``dyn_images`` random training
  images, with the model being fine-tuned;
* ``cls``: the ``sen`` channels, with plain cross-entropy on the clean images instead of L_adv (ECCV).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from advneurons.attacks import pgd_linf
from advneurons.models.layer_names import SNS_LAYERS
from advneurons.models.architectures import DEFAULT_SITE, layer_channels
from advneurons.evaluation.sensitivity import PairHooks, channel_distance, compute_neuron_sensitivity

VARIANTS = ("sen", "all", "rand", "dyn", "cls")

DEFAULT_LAMBDA = {"vgg16": 5.0, "resnet18": 6.0}


def selected_layers(model: nn.Module, arch: str, names: list[str] | None,
                    site: str = DEFAULT_SITE) -> "OrderedDict[str, nn.Module]":
    """The modules of the SNS layers (``names``, default the papers') at measurement site ``site``: the
    modules whose outputs both the channel choice and L_sns read."""
    names = list(names) if names else SNS_LAYERS.get(arch)
    if not names:
        raise ValueError(f"no default SNS layers for architecture {arch!r}; set sns_layers")
    layers = model.layers(site)
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise ValueError(f"SNS layers {unknown} are not layers of {arch} ({', '.join(layers)})")
    return OrderedDict((n, layers[n]) for n in names)


def freeze_below(model: nn.Module, first: str) -> list[nn.Module]:
    """Freeze every parameter registered before those of layer ``first``'s conv (forward order for our
    models) and return the frozen modules that carry BatchNorm statistics, which must stay in eval mode
    while training.

    Addressed by layer name, not module, so that the conv itself stays trainable whichever measurement
    site the SNS loss reads (its BatchNorm or ReLU comes after it).
    """
    first_params = {id(p) for p in model.layers("conv")[first].parameters()}
    frozen_ids = set()
    for p in model.parameters():
        if id(p) in first_params:
            break
        p.requires_grad_(False)
        frozen_ids.add(id(p))
    if len(frozen_ids) == sum(1 for _ in model.parameters()):
        raise ValueError("the first SNS layer was not found among the model's parameters")
    return [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(id(p) in frozen_ids for p in m.parameters())
    ]


def choose_channels(model: nn.Module, layers: "OrderedDict[str, nn.Module]", variant: str, top_percent: float,
                    x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float | None,
                    gen: torch.Generator, batch_size: int = 256) -> "OrderedDict[str, torch.Tensor]":
    """Channel indices per selected layer for ``variant`` (see the module docstring).

    ``layers``: named modules of ``model`` (:func:`selected_layers`); the sensitive sets are measured at
    their outputs. ``x, y``: the images the sensitive sets are measured on (PGD pairs of ``model``, random
    start from ``gen``); unused by ``all`` and ``rand``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown SNS variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    channels = layer_channels(model)
    counts = OrderedDict((n, channels[n]) for n in layers)
    if variant == "all":
        return OrderedDict((n, torch.arange(c)) for n, c in counts.items())
    k = OrderedDict((n, max(1, int(math.ceil(c * top_percent / 100.0)))) for n, c in counts.items())
    if variant == "rand":
        return OrderedDict((n, torch.randperm(c, generator=gen)[: k[n]].sort().values) for n, c in counts.items())
    was_training = model.training
    model.eval()

    def pairs():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            yield xb, pgd_linf(model, xb, yb, eps, steps, step_size, random_start=True, generator=gen)

    sens = compute_neuron_sensitivity(model, pairs(), layers)
    model.train(was_training)
    return OrderedDict(
        (n, torch.from_numpy(sens[n]).argsort(descending=True)[: k[n]].sort().values) for n in layers
    )


class StabilityLoss(PairHooks):
    """Forward hooks on the stabilised modules (:func:`selected_layers` at the SNS site) that compute L_sns
    from the clean and adversarial halves of each training batch (the model is fed ``torch.cat([x, x_adv])``)."""

    def __init__(self, layers: "OrderedDict[str, nn.Module]", channels: "OrderedDict[str, torch.Tensor]"):
        super().__init__(layers)
        self.channels = channels
        self.value: torch.Tensor | None = None
        self.active = False  # only the training forward on cat([x, x_adv]) is measured, not the attack's passes

    def reset(self):
        self.value = None

    def _hook(self, name):
        def hook(_module, _inputs, output):
            if not self.active:
                return
            idx = self.channels[name].to(output.device)
            half = output.shape[0] // 2
            part = output.index_select(1, idx)
            term = channel_distance(part[:half], part[half:], normalise=True).sum(1).mean()
            self.value = term if self.value is None else self.value + term

        return hook


def sns_batch_loss(model: nn.Module, stability: StabilityLoss, xb: torch.Tensor, yb: torch.Tensor,
                   x_adv: torch.Tensor, lam: float, variant: str, clean_weight: float = 0.5):
    """(loss, clean logits, adversarial logits, L_sns) of one batch."""
    stability.reset()
    stability.active = True
    try:
        logits = model(torch.cat([xb, x_adv]))
    finally:
        stability.active = False
    clean_logits, adv_logits = logits[: len(xb)], logits[len(xb) :]
    if variant == "cls":
        task = F.cross_entropy(clean_logits, yb)
    else:
        task = clean_weight * F.cross_entropy(clean_logits, yb) + (1 - clean_weight) * F.cross_entropy(adv_logits, yb)
    l_sns = stability.value if stability.value is not None else torch.zeros((), device=xb.device)
    return task + lam * l_sns, clean_logits, adv_logits, l_sns
