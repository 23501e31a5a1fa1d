"""Helpers shared by the neuron-sensitivity (SNS) analyses: attack adapters, layer maps, table output (figures:
`advneurons.report.figures`).

The analyses in `sns_importance`, `sns_similarity`, `sns_suppression` and `sns_ratios` accept perturbations in
three forms so that any attack of `advneurons.attacks` (or a test's own noise function) plugs in:

* a config entry (dict, eps in 1/255 units) -> `AttackSpec.from_config`;
* an object with ``run(model, x, y, generator=...)`` (an `AttackSpec` or anything shaped like one);
* a plain callable ``f(model, x, y, generator) -> x_perturbed``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from advneurons.attacks import AttackSpec, run_attack


# Name the analyses give to the penultimate representation (VGG: pool5 flattened; ResNet: global average pool).
PENULTIMATE = "penultimate"


@dataclass(frozen=True)
class Perturbation:
    """A resolved perturbation: a function of (model, x, y, generator) and a human-readable description."""

    fn: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator | None], torch.Tensor]
    description: str

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        return self.fn(model, x, y, generator)


def resolve_attack(attack: Any) -> Perturbation:
    """Turn a config dict, an AttackSpec-like object or a callable into a `Perturbation`.

    Fails before any expensive work with a message naming what is wrong.
    """
    if isinstance(attack, Perturbation):
        return attack
    if isinstance(attack, dict):
        attack = AttackSpec.from_config(attack)
    if isinstance(attack, AttackSpec):
        spec = attack
        return Perturbation(lambda model, x, y, g: run_attack(spec, model, x, y, generator=g), spec.describe())
    run = getattr(attack, "run", None)
    if callable(run):
        describe = getattr(attack, "describe", None)
        text = describe() if callable(describe) else repr(attack)
        return Perturbation(lambda model, x, y, g: run(model, x, y, generator=g), text)
    if callable(attack):
        name = getattr(attack, "__name__", type(attack).__name__)
        return Perturbation(lambda model, x, y, g: attack(model, x, y, g), name)
    raise TypeError(
        f"cannot use {attack!r} as an attack: give a config dict, an object with run(model, x, y, generator=...) "
        "or a callable f(model, x, y, generator)"
    )


def strength_label(cfg: Any, level: int) -> str:
    """Column label for one strength of a perturbation family: 'eps=4' / 'severity=3' / 'sigma=20' / 'level 2'.

    Pixel amounts are printed in 1/255 units, as the config gives them (AttackSpec holds [0, 1] units).
    """
    keys = ("eps", "severity", "sigma")
    if isinstance(cfg, dict):
        for key in keys:
            if cfg.get(key) is not None:
                return f"{key}={cfg[key]:g}"
        return f"level {level}"
    for key in keys:
        value = getattr(cfg, key, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{key}={value:g}" if key == "severity" else f"{key}={value * 255:.4g}"
    return f"level {level}"


# ---------------------------------------------------------------------------------------------- layer maps
def activation_names(model: nn.Module) -> "OrderedDict[str, str]":
    """Scored conv layer -> name (in `model.relus()`) of the ReLU applied to its output.

    VGG16: conv{i} -> relu{i}. ResNet18: conv1 -> relu1 (stem); l{s}b{b}c1 -> l{s}b{b}r1 (block.relu1);
    l{s}b{b}c2 -> l{s}b{b}r2 (block.relu2, applied after the residual add, so it also carries the shortcut).
    Shortcut projections (l{s}b1sc) have no ReLU of their own and are left out; so is fc.
    """
    if hasattr(model, "activation_sites"):  # an external model: what its probe found
        return model.activation_sites()
    relus = model.relus()
    out: "OrderedDict[str, str]" = OrderedDict()
    for name in model.layers():
        if name.startswith("conv"):
            relu = "relu" + name[len("conv") :]
        elif re.fullmatch(r"l\d+b\d+c[12]", name):
            relu = name[:-2] + "r" + name[-1]
        else:
            continue
        if relu in relus:
            out[name] = relu
    return out


def activation_modules(model: nn.Module) -> "OrderedDict[str, nn.Module]":
    """Name -> module of every activation site :func:`activation_names` gives (the ReLU modules; for an external
    model also the modules whose output a functional or shared ReLU reads)."""
    if hasattr(model, "activation_sites"):
        return OrderedDict((site, model.network.get_submodule(site)) for site in model.activation_sites().values())
    return model.relus()


def named_modules_for(model: nn.Module, names: list[str]) -> "OrderedDict[str, nn.Module]":
    """Modules for conv names (model.layers()), activation names (:func:`activation_modules`) or PENULTIMATE, in
    the given order."""
    layers, relus = model.layers(), activation_modules(model)
    out: "OrderedDict[str, nn.Module]" = OrderedDict()
    unknown = []
    for name in names:
        if name in layers:
            out[name] = layers[name]
        elif name in relus:
            out[name] = relus[name]
        elif name == PENULTIMATE:
            out[name] = model.penultimate()
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"unknown layer name(s) {', '.join(unknown)}; known: {', '.join([*layers, *relus, PENULTIMATE])}"
        )
    return out


def layers_with_penultimate(model: nn.Module, site: str = "conv") -> "OrderedDict[str, nn.Module]":
    """`model.layers(site)` with the penultimate representation inserted just before fc (depth order)."""
    out: "OrderedDict[str, nn.Module]" = OrderedDict()
    for name, module in model.layers(site).items():
        if name == "fc":
            out[PENULTIMATE] = model.penultimate()
        out[name] = module
    if PENULTIMATE not in out:
        out[PENULTIMATE] = model.penultimate()
    return out
