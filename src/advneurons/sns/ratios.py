"""Sensitivity ratios (TIP Eq 11, Table II, Fig 13-14) and sorted sensitivity curves (TIP Fig 10).

Sensitivity ratio of channel m of layer l over pairs (x, x'):

    ratio_l^m = mean over pairs of ||F_l^m(x) - F_l^m(x')||_1 / ||F_l^m(x)||_1

measured on conv outputs and on the outputs of the ReLU that follows each conv (`activation_names`). A pair
whose clean map is all zero (common after a ReLU) has no defined ratio; it is left out of that channel's mean
and `n_valid` counts the pairs that were used. A layer's value in Table II is the mean over its channels;
Fig 13 averages over the layer's sensitive channels (top-k% by sensitivity, from `sensitive_channels`).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from advneurons.io import write_table
from advneurons.report.figures import LAYER_LABEL, MAX_COLS, grid, layer_ticks, plotting, save_figure
from advneurons.runtime import atomic_path, generator, metadata, model_device, write_json
from advneurons.evaluation.sensitivity import PairHooks
from advneurons.models.layer_names import FIG10_LAYERS, FIG14_LAYERS, arch_of
from advneurons.sns.common import (
    activation_names,
    named_modules_for,
    resolve_attack,
    strength_label,
)
from advneurons.data import load_split
from advneurons.evaluation.pairs import select_subset
from advneurons.models.checkpoint import load_model
from advneurons.models.inference import for_attacks


def default_ratio_layers(model: nn.Module) -> list[str]:
    """Every conv layer that has a ReLU after it, each followed by that ReLU: conv1, relu1, conv2, relu2, ..."""
    out = []
    for conv, relu in activation_names(model).items():
        out += [conv, relu]
    return out


class RatioAccumulator(PairHooks):
    """Forward hooks summing per-channel ratios ||F(x) - F(x')||_1 / ||F(x)||_1 over pairs with ||F(x)||_1 > 0.

    The model is fed ``torch.cat([clean, perturbed])``; each hooked module splits its output in two halves.
    """

    def __init__(self, modules: "OrderedDict[str, nn.Module]"):
        super().__init__(modules)
        self.sums: dict[str, torch.Tensor] = {}
        self.valid: dict[str, torch.Tensor] = {}

    def _hook(self, name):
        def hook(_module, _inputs, output):
            half = output.shape[0] // 2
            clean, pert = output[:half].double(), output[half:].double()
            if clean.dim() > 2:
                num = (clean - pert).abs().flatten(2).sum(2)
                den = clean.abs().flatten(2).sum(2)
            else:
                num, den = (clean - pert).abs(), clean.abs()
            ok = den > 0
            ratio = torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))
            self.sums[name] = self.sums.get(name, 0) + ratio.sum(0)
            self.valid[name] = self.valid.get(name, 0) + ok.sum(0)

        return hook

    def result(self) -> "OrderedDict[str, tuple[np.ndarray, np.ndarray]]":
        """Layer -> (mean ratio per channel, NaN where no pair was valid; number of valid pairs per channel)."""
        if self.count == 0:
            raise ValueError("no pairs were seen; sensitivity ratios are undefined")
        out = OrderedDict()
        for name in self.modules:
            valid = self.valid[name].numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(valid > 0, self.sums[name].numpy() / np.maximum(valid, 1), np.nan)
            out[name] = (mean, valid.astype(np.int64))
        return out


@torch.no_grad()
def pair_ratios(
    model: nn.Module,
    clean: torch.Tensor,
    perturbed: torch.Tensor,
    modules: "OrderedDict[str, nn.Module]",
    batch_size: int = 200,
) -> "OrderedDict[str, tuple[np.ndarray, np.ndarray]]":
    """Per-channel sensitivity ratios of the named modules over the pairs (clean[i], perturbed[i])."""
    model.eval()
    with RatioAccumulator(modules) as acc:
        for i in range(0, len(clean), batch_size):
            model(torch.cat([clean[i : i + batch_size], perturbed[i : i + batch_size]]))
            acc.count += len(clean[i : i + batch_size])
    return acc.result()


def compute_sensitivity_ratios(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    perturbations: dict[str, Sequence[Any]],
    layers: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 200,
    crafter: nn.Module | None = None,
) -> pd.DataFrame:
    """Long table of per-channel ratios for every perturbation family and strength.

    `perturbations`: family name -> list of attacks of increasing strength (config dicts, AttackSpec-like
    objects or callables; `sns_common.resolve_attack`). Columns: family, level (1-based), strength, attack,
    layer, kind (conv/relu), conv (the conv layer the row belongs to), position, channel, ratio, n_valid, n_pairs.
    `crafter`: the model the perturbations are crafted against, on any device, when that is not `model` itself
    but the same function in a faster form (`models.inference.for_attacks`: BatchNorm folded, which would change
    the convolution outputs the ratios read); the ratios are always read from `model`.
    """
    model.eval()
    names = list(layers) if layers is not None else default_ratio_layers(model)
    modules = named_modules_for(model, names)
    conv_of = {relu: conv for conv, relu in activation_names(model).items()}
    conv_names = set(model.layers())
    target = crafter if crafter is not None else model
    where = model_device(target)
    resolved = {
        fam: [(strength_label(a, i + 1), resolve_attack(a)) for i, a in enumerate(items)]
        for fam, items in perturbations.items()
    }
    frames = []
    jobs = [
        (fam, lvl, label, attack)
        for fam, items in resolved.items()
        for lvl, (label, attack) in enumerate(items, start=1)
    ]
    for j, (fam, level, label, attack) in enumerate(tqdm(jobs, desc="sensitivity ratios", mininterval=5.0)):
        gen = generator(seed + 131 * (j + 1))
        adv = torch.cat(
            [attack(target, x[i : i + batch_size].to(where), y[i : i + batch_size].to(where), gen).to(x.device)
             for i in range(0, len(x), batch_size)]
        )
        ratios = pair_ratios(model, x, adv, modules, batch_size)
        for position, (name, (mean, valid)) in enumerate(ratios.items()):
            kind = "conv" if name in conv_names else "relu"
            frames.append(
                pd.DataFrame(
                    {
                        "family": fam,
                        "level": level,
                        "strength": label,
                        "attack": attack.description,
                        "layer": name,
                        "kind": kind,
                        "conv": name if kind == "conv" else conv_of.get(name, name),
                        "position": position,
                        "channel": np.arange(len(mean)),
                        "ratio": mean,
                        "n_valid": valid,
                        "n_pairs": len(x),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def sensitivity_ratios(
    model_path: Path,
    test_path: Path,
    perturbations: dict[str, Sequence[Any]],
    out_csv: Path,
    meta_path: Path,
    n_images: int | None = 200,
    seed: int = 0,
    batch_size: int = 200,
    layers: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Workflow step: per-channel sensitivity ratios of one model (conv and ReLU outputs) per perturbation.

    `perturbations`: family -> list of attack config dicts (1/255 units) of increasing strength, e.g.
    {"linf_pgd": [{"type": "pgd", "eps": 4, "steps": 10}, ..., {... "eps": 32 ...}], "gaussian": [...]}.
    The perturbations are untargeted and crafted against this model on a seeded subset of `n_images` test
    images. Outputs `out_csv` (long table, see `compute_sensitivity_ratios`) and `meta_path`.
    """

    if not perturbations or any(len(v) == 0 for v in perturbations.values()):
        raise ValueError("every perturbation family needs at least one strength")
    for items in perturbations.values():
        for a in items:
            resolve_attack(a)  # a bad attack fails before the model is loaded
    model, _ = load_model(model_path)
    names = list(layers) if layers is not None else default_ratio_layers(model)
    named_modules_for(model, names)
    crafter = for_attacks(copy.deepcopy(model))  # the attacks' model; the ratios read `model`'s conv outputs
    images, labels = load_split(test_path)
    index = torch.from_numpy(select_subset(len(labels), n_images, seed))
    table = compute_sensitivity_ratios(model, images[index], labels[index], perturbations, names, seed, batch_size,
                                       crafter=crafter)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    write_json(
        metadata(
            "sensitivity_ratios",
            {
                "perturbations": {
                    k: [a if isinstance(a, dict) else resolve_attack(a).description for a in v]
                    for k, v in perturbations.items()
                },
                "n_images": n_images,
                "batch_size": batch_size,
                "layers": names,
                "model": str(model_path),
            },
            seed=seed,
            n_pairs=len(index),
            attacks=table[["family", "level", "strength", "attack"]].drop_duplicates().to_dict(orient="records"),
        ),
        meta_path,
    )
    return table


# ------------------------------------------------------------------------------------------- summaries
def layer_mean_ratios(ratios: pd.DataFrame, sensitive: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean ratio over the channels of each layer (or over its sensitive channels, if given).

    `sensitive` holds (layer, channel) rows of conv layers (e.g. `sensitive_channels` output); a ReLU row
    then averages over the channels of the conv layer it follows. Channels with no valid pair are skipped.
    """
    data = ratios
    if sensitive is not None:
        keys = sensitive[["layer", "channel"]].rename(columns={"layer": "conv"}).drop_duplicates()
        data = ratios.merge(keys, on=["conv", "channel"], how="inner")
    grouped = data.groupby(["family", "level", "strength", "layer", "kind", "conv", "position"], sort=False)
    out = grouped.agg(ratio=("ratio", "mean"), n_channels=("channel", "size")).reset_index()
    return out.sort_values(["family", "level", "position"], kind="stable").reset_index(drop=True)


def default_table_layers(ratios: pd.DataFrame, n_conv: int = 4) -> list[str]:
    """The last `n_conv` non-shortcut conv layers, each followed by its ReLU (VGG16: conv10, relu10, ..., relu13)."""
    order = ratios[["layer", "kind", "conv", "position"]].drop_duplicates().sort_values("position")
    convs = [c for c in order[order["kind"] == "conv"]["layer"] if not str(c).endswith("sc")][-n_conv:]
    return [name for name in order["layer"] if order.set_index("layer").loc[name, "conv"] in convs]


def ratio_table(
    ratio_frames: dict[str, pd.DataFrame], family: str, layers: Sequence[str] | None = None
) -> pd.DataFrame:
    """TIP Table II: rows (model, layer, kind), one column per strength of `family`, mean ratio over channels."""
    rows = []
    for model_label, ratios in ratio_frames.items():
        fam = ratios[ratios["family"] == family]
        if fam.empty:
            raise ValueError(
                f"{model_label}: no perturbation family {family!r} (have {sorted(ratios['family'].unique())})"
            )
        wanted = list(layers) if layers is not None else default_table_layers(fam)
        means = layer_mean_ratios(fam)
        strengths = means[["level", "strength"]].drop_duplicates().sort_values("level")["strength"].tolist()
        missing = [name for name in wanted if name not in set(means["layer"])]
        if missing:
            raise ValueError(f"{model_label}: no ratios for layer(s) {', '.join(missing)}")
        for name in wanted:
            sub = means[means["layer"] == name]
            kind = sub["kind"].iloc[0]
            values = sub.set_index("strength")["ratio"]
            rows.append(
                {"model": model_label, "layer": name, "kind": kind, **{s: values.get(s, np.nan) for s in strengths}}
            )
    return pd.DataFrame(rows)


def ratio_report(
    ratio_csvs: dict[str, Path],
    table_family: str,
    out_table_csv: Path,
    out_table_md: Path,
    layer_means_csv: Path,
    fig13_png: Path,
    fig14_png: Path,
    meta_path: Path,
    top_csvs: dict[str, Path] | None = None,
    table_layers: Sequence[str] | None = None,
    fig14_layers: Sequence[str] | None = None,
    title: str = "",
) -> pd.DataFrame:
    """Workflow step: TIP Table II, Fig 13 and Fig 14 from the ratio tables of several models.

    `ratio_csvs`: model label (e.g. "vanilla", "pat") -> CSV of `sensitivity_ratios` (same architecture).
    `top_csvs`: model label -> sensitive channels CSV (`sensitive_channels`, layer/channel columns) of that
    model; Fig 13 averages over them (all channels if not given). `table_family` picks the family of Table II
    and Fig 14 (e.g. "linf_pgd"). Outputs: Table II (`out_table_csv`, `out_table_md`), per-layer means of
    every family (`layer_means_csv`: model, family, level, strength, layer, kind, ratio_all, ratio_sensitive),
    `fig13_png` (mean ratio of the sensitive neurons per conv layer, one panel per family and model),
    `fig14_png` (ratio vs strength for four conv layers, one line per model) and `meta_path`.
    """
    frames = {label: pd.read_csv(path) for label, path in ratio_csvs.items()}
    table = ratio_table(frames, table_family, table_layers)
    strengths = [c for c in table.columns if c not in ("model", "layer", "kind")]
    heading = f"Sensitivity ratios (TIP Eq 11){' — ' + title if title else ''}: {table_family}"
    attacks = next(iter(frames.values()))
    described = attacks[attacks["family"] == table_family][["strength", "attack"]].drop_duplicates()
    notes = (
        "Mean over the layer's channels of the mean over pairs of ||F(x)-F(x')||_1 / ||F(x)||_1 (pairs with an "
        "all-zero clean map excluded). ReLU rows are the outputs of the ReLU after the conv above them. "
        "Columns: " + "; ".join(f"{s} = {a}" for s, a in zip(described["strength"], described["attack"])) + "."
    )
    write_table(table, out_table_csv, out_table_md, heading, notes)

    means = []
    for label, ratios in frames.items():
        all_means = layer_mean_ratios(ratios).rename(columns={"ratio": "ratio_all", "n_channels": "n_channels_all"})
        if top_csvs and label in top_csvs:
            sens = layer_mean_ratios(ratios, pd.read_csv(top_csvs[label]))
            sens = sens.rename(columns={"ratio": "ratio_sensitive", "n_channels": "n_channels_sensitive"})
            all_means = all_means.merge(
                sens, on=["family", "level", "strength", "layer", "kind", "conv", "position"], how="left"
            )
        else:
            all_means["ratio_sensitive"] = np.nan
            all_means["n_channels_sensitive"] = 0
        means.append(all_means.assign(model=label))
    layer_means = pd.concat(means, ignore_index=True)
    layer_means = layer_means[
        [
            "model",
            "family",
            "level",
            "strength",
            "layer",
            "kind",
            "conv",
            "position",
            "ratio_all",
            "n_channels_all",
            "ratio_sensitive",
            "n_channels_sensitive",
        ]
    ]
    write_table(layer_means, layer_means_csv, None, "")
    save_figure(ratio_layer_figure(layer_means, title), fig13_png)
    layers14 = list(fig14_layers) if fig14_layers is not None else FIG14_LAYERS[arch_of(layer_means["layer"].unique())]
    save_figure(ratio_strength_figure(layer_means, table_family, layers14, title), fig14_png)
    write_json(
        metadata(
            "ratio_report",
            {
                "ratio_csvs": {k: str(v) for k, v in ratio_csvs.items()},
                "top_csvs": {k: str(v) for k, v in (top_csvs or {}).items()},
                "table_family": table_family,
                "table_layers": table["layer"].unique().tolist(),
                "fig14_layers": layers14,
            },
            strengths=strengths,
        ),
        meta_path,
    )
    return table


# Each point averages per-channel ratios that are themselves means over the image pairs; the ratio CSV keeps
# no per-pair values, so the figures cannot draw an interval over images and say so.
NO_BAND = "points: means over channels and image pairs; no band (per-pair ratios not kept)"


def ratio_layer_figure(layer_means: pd.DataFrame, title: str = ""):
    """TIP Fig 13: mean ratio of the sensitive (else all) channels per conv layer, one panel per family and
    model (a row per family while the models fit in a row), one line per strength."""
    _, sns = plotting()
    conv = layer_means[layer_means["kind"] == "conv"].copy()
    use_sensitive = conv["ratio_sensitive"].notna().any()
    conv["value"] = conv["ratio_sensitive"] if use_sensitive else conv["ratio_all"]
    families, models = list(conv["family"].unique()), list(conv["model"].unique())
    panels = [(fam, m) for fam in families for m in models]
    by_family = len(models) <= MAX_COLS
    fig, axes = grid(len(panels), max_cols=len(models) if by_family else MAX_COLS, panel_size=(5.0, 3.8),
                     **({"sharey": "row"} if by_family else {}))
    order = conv[["layer", "position"]].drop_duplicates().sort_values("position")
    for ax, (fam, model_label) in zip(axes, panels):
        sub = conv[(conv["family"] == fam) & (conv["model"] == model_label)]
        sns.lineplot(data=sub, x="position", y="value", hue="strength", marker="o", errorbar=None, ax=ax,
                     palette="viridis")
        layer_ticks(ax, order["position"], order["layer"], f"conv {LAYER_LABEL}")
        ax.set_title(f"{model_label}: {fam}")
        ax.set_ylabel("mean ratio, " + ("sensitive channels" if use_sensitive else "all channels"))
        ax.tick_params(axis="y", labelleft=True)  # seaborn hides both on the shared axes; panels are read alone
        ax.yaxis.label.set_visible(True)
        ax.legend(title="strength")
    fig.suptitle(f"Sensitivity ratio ‖F(x)−F(x′)‖₁ / ‖F(x)‖₁ per conv layer (TIP Fig 13)"
                 f"{' — ' + title if title else ''}\n{NO_BAND}")
    return fig


def ratio_strength_figure(layer_means: pd.DataFrame, family: str, layers: Sequence[str], title: str = ""):
    """TIP Fig 14: mean ratio over all channels vs perturbation strength, one panel per layer, one line per
    model."""
    _, sns = plotting()
    sub = layer_means[(layer_means["family"] == family) & (layer_means["layer"].isin(list(layers)))]
    fig, axes = grid(len(layers), panel_size=(4.4, 3.6))
    for ax, name in zip(axes, layers):
        data = sub[sub["layer"] == name]
        sns.lineplot(data=data, x="level", y="ratio_all", hue="model", marker="o", errorbar=None, ax=ax)
        ticks = data[["level", "strength"]].drop_duplicates().sort_values("level")
        ax.set_xticks(ticks["level"].tolist())
        ax.set_xticklabels(ticks["strength"].tolist(), rotation=45, ha="right", rotation_mode="anchor")
        ax.set_title(name)
        ax.set_xlabel("perturbation strength (eps, sigma in 1/255)")
        ax.set_ylabel("mean ratio, all channels")
    fig.suptitle(f"Sensitivity ratio vs strength, {family} (TIP Fig 14){' — ' + title if title else ''}\n{NO_BAND}")
    return fig


# ---------------------------------------------------------------------------------- sensitivity curves
def sensitivity_curves_plot(tables: dict[str, pd.DataFrame], layers: Sequence[str], top_percent: float = 10.0,
                            title: str = ""):
    """TIP Fig 10: per-channel sensitivity sorted in decreasing order, one panel per layer, one line per model
    (`tables`: model label -> sensitivity table). Each point is one channel's sensitivity, a mean over the
    image pairs; the tables keep no per-pair values, so there is no band."""
    fig, axes = grid(len(layers), panel_size=(4.4, 3.6))
    for ax, name in zip(axes, layers):
        for label, table in tables.items():
            values = np.sort(table[table["layer"] == name]["sensitivity"].to_numpy())[::-1]
            ax.plot(np.arange(1, len(values) + 1), values, marker=".", ms=3, label=label)
            k = max(1, math.ceil(len(values) * top_percent / 100.0))
            ax.axvline(k + 0.5, color="grey", ls=":", lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("channel rank (1 = most sensitive)")
        ax.set_ylabel("neuron sensitivity (TIP Eq 1)")
        ax.legend()
    fig.suptitle(
        f"Sorted neuron sensitivity (TIP Fig 10){' — ' + title if title else ''}\n"
        f"dotted: top {top_percent:g}% boundary; points: means over image pairs; no band (per-pair values not kept)"
    )
    return fig


def sensitivity_layer_summary(tables: dict[str, pd.DataFrame], top_percent: float = 10.0) -> pd.DataFrame:
    """Per layer and model: mean (and standard deviation) of the sensitivity over all channels, and the mean
    over the top `top_percent`%."""
    rows = []
    for label, table in tables.items():
        for (layer, depth), group in table.groupby(["layer", "depth"], sort=False):
            values = np.sort(group["sensitivity"].to_numpy())[::-1]
            k = max(1, math.ceil(len(values) * top_percent / 100.0))
            rows.append(
                {
                    "model": label,
                    "layer": layer,
                    "depth": int(depth),
                    "n_channels": len(values),
                    "mean_sensitivity": float(values.mean()),
                    # the channels' spread: the findings test each layer's vanilla vs PAT means with it (Welch)
                    "std_sensitivity": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                    f"mean_top{top_percent:g}pct": float(values[:k].mean()),
                }
            )
    return pd.DataFrame(rows).sort_values(["depth", "model"], kind="stable").reset_index(drop=True)


def sensitivity_curves(
    sensitivity_csvs: dict[str, Path],
    out_png: Path,
    summary_csv: Path,
    summary_md: Path,
    meta_path: Path,
    layers: Sequence[str] | None = None,
    top_percent: float = 10.0,
    title: str = "",
) -> pd.DataFrame:
    """Workflow step: sorted per-channel sensitivity, one line per model, four layers (TIP Fig 10).

    `sensitivity_csvs`: model label (e.g. "vanilla", "pat") -> CSV of `neuron_sensitivity` (each model on
    its own PGD pairs). `layers` defaults to conv1, conv4, conv7, conv13 (VGG16) or l1b1c1, l2b1c1, l3b1c2,
    l4b1c1 (ResNet18). Outputs: `out_png`; `summary_csv`/`summary_md` with the mean sensitivity of every layer
    per model (all channels and the top `top_percent`%); `meta_path`.
    """
    tables = {label: pd.read_csv(path) for label, path in sensitivity_csvs.items()}
    first = next(iter(tables.values()))
    chosen = list(layers) if layers is not None else FIG10_LAYERS[arch_of(first["layer"].unique())]
    for label, table in tables.items():
        missing = [name for name in chosen if name not in set(table["layer"])]
        if missing:
            raise ValueError(f"{label}: sensitivity table lacks layer(s) {', '.join(missing)}")
    summary = sensitivity_layer_summary(tables, top_percent)
    wide = summary.pivot_table(index=["depth", "layer"], columns="model", values="mean_sensitivity").reset_index()
    wide.columns = [c if c in ("depth", "layer") else f"mean sensitivity {c}" for c in wide.columns]
    heading = f"Mean neuron sensitivity per layer{' — ' + title if title else ''}"
    write_table(summary, summary_csv, None, "")
    write_table(
        wide.drop(columns="depth"),
        None,
        summary_md,
        heading,
        "TIP Eq 1 (normalised by map size), each model on its own untargeted PGD pairs.",
    )

    save_figure(sensitivity_curves_plot(tables, chosen, top_percent, title), out_png)
    write_json(
        metadata(
            "sensitivity_curves",
            {
                "sensitivity_csvs": {k: str(v) for k, v in sensitivity_csvs.items()},
                "layers": chosen,
                "top_percent": top_percent,
            },
        ),
        meta_path,
    )
    return summary
