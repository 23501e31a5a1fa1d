"""Neuron sensitivity (TIP Eq 1) of every named layer in one streaming pass over a pair set.

For channel m of layer l and pairs (x, x'):

    sigma_l^m = mean over pairs of ||F_l^m(x) - F_l^m(x')||_1 / dim(F_l^m(x))

where F_l^m(x) is the channel's feature map (H x W for a conv layer, a scalar for a linear layer). The ECCV
version omits the division by dim; `normalise=False` gives it. Forward hooks on all layers accumulate
per-channel sums while batches stream through, so memory does not grow with the number of pairs.

F_l is read at a measurement site (`models.SITES`), by default the BatchNorm output: the bias-free conv
output before it has an arbitrary per-channel scale (BatchNorm divides it away), so sensitivities
measured there rank channels, and compare models, by weight scale as much as by the input change.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from advneurons.models.hooks import hooked
from advneurons.models.architectures import DEFAULT_SITE
from advneurons.runtime import model_device
from advneurons.evaluation.pairs import open_pairs
from advneurons.models.architectures import check_site
from advneurons.models.checkpoint import load_model
from advneurons.runtime import atomic_path, device, metadata, write_json


def channel_distance(clean: torch.Tensor, perturbed: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Per pair and channel ||F(x) - F(x')||_1 (divided by the map size if `normalise`): shape (N, C)."""
    diff = (clean - perturbed).abs()
    if diff.dim() > 2:
        diff = diff.flatten(2)
        per_channel = diff.sum(2)
        return per_channel / diff.shape[2] if normalise else per_channel
    return diff


class PairHooks:
    """Forward hooks on named modules, registered for the duration of a ``with`` block.

    The model is fed ``torch.cat([clean, perturbed])``, so every hooked module sees the clean half and the
    perturbed half of its output in one call; subclasses say in `_hook` what to accumulate from them.
    """

    def __init__(self, modules: "OrderedDict[str, nn.Module]"):
        self.modules = modules
        self.count = 0
        self._hooks = None

    def __enter__(self):
        self._hooks = hooked(on_output=[(module, self._hook(name)) for name, module in self.modules.items()])
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        self._hooks = None

    def _hook(self, name):
        raise NotImplementedError


class SensitivityAccumulator(PairHooks):
    """Sums per-channel distances between the clean and perturbed halves of each batch, for the forward passes
    run inside :meth:`measuring` only: other passes of the model while the hooks are in place (an attack making
    the next batch of pairs) are not pairs and must not be counted."""

    def __init__(self, layers: "OrderedDict[str, nn.Module]", normalise: bool = True):
        super().__init__(layers)
        self.layers = layers
        self.normalise = normalise
        self.sums: dict[str, torch.Tensor] = {}
        self.active = False

    @contextmanager
    def measuring(self):
        self.active = True
        try:
            yield self
        finally:
            self.active = False

    def _hook(self, name):
        def hook(_module, _inputs, output):
            if not self.active:
                return
            half = output.shape[0] // 2
            dist = channel_distance(output[:half], output[half:], self.normalise).sum(0).double()
            self.sums[name] = self.sums[name] + dist if name in self.sums else dist

        return hook

    def result(self) -> "OrderedDict[str, np.ndarray]":
        if self.count == 0:
            raise ValueError("no pairs were seen; sensitivity is undefined")
        return OrderedDict((name, (self.sums[name] / self.count).cpu().numpy()) for name in self.layers if name in self.sums)


@torch.no_grad()
def compute_neuron_sensitivity(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    layers: "OrderedDict[str, nn.Module] | None" = None,
    normalise: bool = True,
    site: str | None = None,
) -> "OrderedDict[str, np.ndarray]":
    """Sensitivity per channel of every layer, streaming over (clean, perturbed) batches.

    The layers are `model.layers(site)` (`site` defaults to `models.DEFAULT_SITE`), or the modules
    `layers` gives; giving both is an error, as the site could not apply to modules chosen elsewhere.
    """
    if layers is not None and site is not None:
        raise ValueError("give the layers to hook or a measurement site, not both")
    model.eval()
    dev = model_device(model)
    layers = layers if layers is not None else model.layers(DEFAULT_SITE if site is None else site)
    with SensitivityAccumulator(layers, normalise) as acc:
        for clean, perturbed in batches:  # a lazy source may run the model itself (SNS: PGD makes the pairs)
            if clean.shape != perturbed.shape:
                raise ValueError(f"clean batch {tuple(clean.shape)} and perturbed batch {tuple(perturbed.shape)} differ")
            with acc.measuring():
                model(torch.cat([clean, perturbed]).to(dev))
            acc.count += len(clean)
    return acc.result()


def sensitivity_table(sens: "OrderedDict[str, np.ndarray]") -> pd.DataFrame:
    """Long format: layer, depth (0-based position of the layer), channel, sensitivity."""
    frames = [
        pd.DataFrame({"layer": name, "depth": depth, "channel": np.arange(len(values)), "sensitivity": values})
        for depth, (name, values) in enumerate(sens.items())
    ]
    return pd.concat(frames, ignore_index=True)


def top_channels(table: pd.DataFrame, percent: float) -> pd.DataFrame:
    """The top `percent`% channels of each layer by sensitivity (at least one), ranked from 1.

    Ties are broken by channel index so the selection is deterministic.
    """
    if not 0 < percent <= 100:
        raise ValueError(f"top percentage must be in (0, 100], got {percent}")
    picked = []
    for _, group in table.groupby("depth", sort=True):
        k = max(1, int(np.ceil(len(group) * percent / 100.0)))
        best = group.sort_values(["sensitivity", "channel"], ascending=[False, True]).head(k).copy()
        best["rank"] = np.arange(1, len(best) + 1)
        best["n_channels"] = len(group)
        picked.append(best)
    return pd.concat(picked, ignore_index=True)[["layer", "depth", "rank", "channel", "sensitivity", "n_channels"]]


def neuron_sensitivity(
    model_path: Path,
    pairs_path: Path,
    normalise: bool,
    batch_size: int,
    out_csv: Path,
    meta_path: Path,
    *,
    site: str = DEFAULT_SITE,
) -> pd.DataFrame:
    """Workflow step: per-channel sensitivity of every layer of a model over one pair set, read at `site`."""

    check_site(site)  # before loading anything
    model, _ = load_model(model_path)
    model.to(device())
    pairs = open_pairs(pairs_path)
    sens = compute_neuron_sensitivity(model, pairs.batches(batch_size, desc="sensitivity"), normalise=normalise, site=site)
    table = sensitivity_table(sens)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    summary = table.groupby("layer", sort=False)["sensitivity"].agg(["mean", "max"]).to_dict(orient="index")
    write_json(
        metadata(
            "neuron_sensitivity",
            {"normalise": normalise, "site": site, "batch_size": batch_size, "pairs": str(pairs_path),
             "model": str(model_path)},
            n_pairs=len(pairs),
            per_layer=summary,
        ),
        meta_path,
    )
    return table


def sensitive_channels(sensitivity_csv: Path, percent: float, out_csv: Path) -> pd.DataFrame:
    """Workflow step: the top `percent`% sensitive channels of each layer."""

    picked = top_channels(pd.read_csv(sensitivity_csv), percent)
    with atomic_path(out_csv) as tmp:
        picked.to_csv(tmp, index=False)
    return picked
