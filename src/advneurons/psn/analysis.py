"""Analyses of propagation-sensitive neurons (docs/methods.md, propagation-sensitive neurons): activation deviation, attacking PSNs,
single-unit Grad-CAM focus maps, and agreement with channel-level neuron sensitivity.

Every analysis reads units from a PSN score table (:func:`advneurons.psn.scores.psn_scores`) or a top-unit
table (:func:`advneurons.psn.scores.psn_top_units`), on the nodes that table holds (the ReLU inputs or every
node, :mod:`advneurons.psn.graph`). A unit's activation is the value of its node, which is what the
PSN score rates; noise is injected there too. Random baselines are drawn, per node, from the units
*outside* the chosen set, with a seeded generator, and have the same size as the chosen set.
"""

from __future__ import annotations

import math
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from advneurons.models.hooks import hooked
from advneurons.report.figures import LAYER_LABEL, figure_width, layer_ticks, plotting, save_figure
from advneurons.attacks import uniform_noise
from advneurons.evaluation.accuracy import clean_accuracy
from advneurons.io import write_table
from advneurons.sns.similarity import jaccard
from advneurons.report.markdown import markdown_table, write_markdown
from advneurons.psn.scores import read_scores, select_images, top_units_table
from advneurons.psn.graph import ActivationRecorder, ScoredLayer, scored_layers
from advneurons.attacks import from_255, pgd_linf
from advneurons.data import load_split
from advneurons.evaluation.paired_stats import wilson_interval
from advneurons.models.checkpoint import load_model
from advneurons.runtime import generator, metadata, write_json

PERTURBATIONS = ("noise", "pgd")


# ------------------------------------------------------------------------------------------ helpers
def _flat_index(table: pd.DataFrame, shape) -> np.ndarray:
    """Flat unit index (channel, h, w in the layer's flattening order) of each row."""
    if len(shape) == 1:
        return table["channel"].to_numpy(dtype=np.int64)
    return np.ravel_multi_index(
        (table["channel"].to_numpy(), table["h"].to_numpy(), table["w"].to_numpy()), tuple(shape)
    ).astype(np.int64)


def layer_shapes(model: nn.Module, image_shape=(3, 32, 32), layers=None) -> "OrderedDict[str, tuple]":
    """Shape (without batch) of every scored layer's output."""
    layers = layers if layers is not None else scored_layers(model)
    with torch.no_grad(), ActivationRecorder(model, layers) as rec:
        model(torch.zeros(1, *image_shape))
    return OrderedDict((name, tuple(rec.values[name].shape[1:])) for name in layers)


def nodes_of_table(model: nn.Module, table: pd.DataFrame) -> "OrderedDict[str, ScoredLayer]":
    """The model's scored nodes that a score or unit table names, in forward order: the analyses run on
    the nodes that were scored, whichever node set (``relu_inputs`` or ``all``) produced the table."""
    every = scored_layers(model, "all")
    named = set(table["layer"])
    unknown = sorted(named - set(every))
    if unknown:
        raise ValueError(f"the table names nodes the model does not have: {unknown} (the model's nodes are "
                         f"{list(every)}; a table written before the node names gained their .bn / .relu suffixes "
                         "must be recomputed)")
    return OrderedDict((name, node) for name, node in every.items() if name in named)


def chosen_units(table: pd.DataFrame, shapes: "OrderedDict[str, tuple]") -> "OrderedDict[str, np.ndarray]":
    """Flat unit indices per layer of a unit table; every layer of the table must be in ``shapes``."""
    unknown = sorted(set(table["layer"]) - set(shapes))
    if unknown:
        raise ValueError(f"unit table names layers the model does not have: {unknown}")
    out = OrderedDict()
    for name, shape in shapes.items():
        rows = table[table["layer"] == name]
        if len(rows):
            out[name] = np.unique(_flat_index(rows, shape))
    return out


def random_units(chosen: "OrderedDict[str, np.ndarray]", shapes, seed: int) -> "OrderedDict[str, np.ndarray]":
    """Per layer, as many units as chosen, drawn uniformly from the units outside the chosen set."""

    gen = generator(seed)
    out = OrderedDict()
    for name, picked in chosen.items():
        total = int(np.prod(shapes[name]))
        rest = np.setdiff1d(np.arange(total), picked)
        k = min(len(picked), len(rest))
        order = torch.randperm(len(rest), generator=gen)[:k].numpy()
        out[name] = np.sort(rest[order])
    return out


def psn_unit_table(path: Path, percent: float) -> pd.DataFrame:
    """Units of a top-unit table at ``percent`` (column ``percent``), or the top ``percent``% of a
    score table."""
    table = read_scores(path)
    if "percent" in table.columns:
        rows = table[np.isclose(table["percent"].astype(float), float(percent))]
        if rows.empty:
            have = sorted(table["percent"].astype(float).unique())
            raise ValueError(f"{path} has no units at top {percent}% (it has {have})")
        return rows
    return top_units_table(table, percent)


def _load_test(model_path, test_path, n_images, seed):
    model, ckpt = load_model(model_path)
    images, labels = load_split(test_path)
    index = select_images(len(images), n_images, seed)
    return model, ckpt, images[index], labels[index], index


# ------------------------------------------------------------------------------------------ deviation
@torch.no_grad()
def mean_abs_deviation(model: nn.Module, clean: torch.Tensor, perturbed: torch.Tensor, layers,
                       batch_size: int = 128) -> "OrderedDict[str, torch.Tensor]":
    """Per scored layer and unit: mean over images of |a(x) - a(x')| (float64, flattened units)."""
    sums: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for start in range(0, len(clean), batch_size):
        with ActivationRecorder(model, layers) as rec:
            model(torch.cat([clean[start : start + batch_size], perturbed[start : start + batch_size]]))
        for name in layers:
            value = rec.values[name]
            half = value.shape[0] // 2
            diff = (value[:half] - value[half:]).abs().flatten(1).sum(0).double()
            sums[name] = sums[name] + diff if name in sums else diff
    return OrderedDict((name, s / len(clean)) for name, s in sums.items())


def pgd_images(model, x, y, eps, step, steps, gen, batch_size=128):
    """L-inf PGD with random start, batch by batch, in [0, 1] units."""

    out = [
        pgd_linf(model, x[i : i + batch_size], y[i : i + batch_size], eps, steps, step, random_start=True, generator=gen)
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out) if out else x.clone()


def deviation_tables(layers, chosen, baseline, deviations: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-layer and per-block tables of the mean deviation of the chosen and baseline units.

    ``deviations`` maps a perturbation name to :func:`mean_abs_deviation`'s result. The block value is
    the mean of its layers' values.
    """
    rows = []
    depth_of = {name: i for i, name in enumerate(layers)}
    for perturbation, dev in deviations.items():
        for name in chosen:
            for group, units in (("psn", chosen[name]), ("random", baseline[name])):
                rows.append({
                    "layer": name, "depth": depth_of[name], "block": layers[name].block,
                    "perturbation": perturbation, "group": group, "n_units": len(units),
                    "deviation": float(dev[name][torch.from_numpy(units)].mean()) if len(units) else float("nan"),
                })
    per_layer = pd.DataFrame(rows)
    per_block = (
        per_layer.groupby(["block", "perturbation", "group"], sort=False)
        .agg(deviation=("deviation", "mean"), n_layers=("layer", "nunique"), first_depth=("depth", "min"))
        .reset_index()
        .sort_values(["perturbation", "first_depth", "group"])
        .drop(columns="first_depth")
        .reset_index(drop=True)
    )
    return per_layer, per_block


def plot_deviation(per_layer: pd.DataFrame, title: str):
    """Mean deviation per scored layer, PSN vs random units, one line style per perturbation. Each point is
    already a mean over images and units (the per-image values are not kept), so there is no band."""
    plt, sns = plotting()
    fig, ax = plt.subplots(figsize=(figure_width(per_layer["depth"].nunique()), 4.2))
    sns.lineplot(data=per_layer, x="depth", y="deviation", hue="group", style="perturbation", markers=True,
                 errorbar=None, ax=ax)
    ticks = per_layer.drop_duplicates("depth").sort_values("depth")
    layer_ticks(ax, ticks["depth"], ticks["layer"], f"scored {LAYER_LABEL}")
    ax.set_ylabel("mean |a(x) − a(x′)| (activation units)")
    ax.set_title(title + "\n(mean over images and units; no band)")
    return fig


def psn_deviation(model_path: Path, test_path: Path, units_path: Path, percent: float,
                         n_images: int | None, seed: int, out_layer_csv: Path, out_block_csv: Path,
                         out_png: Path, meta_path: Path, noise_eps: float = 8, pgd_eps: float = 8,
                         pgd_step: float = 2, pgd_steps: int = 40, batch_size: int = 128) -> pd.DataFrame:
    """Workflow step: activation deviation of PSN units vs random non-PSN units (docs/methods.md, propagation-sensitive neurons).

    ``units_path``: a top-unit table (its rows at ``percent``) or a score table (top ``percent``% taken).
    Perturbations: uniform noise U(-noise_eps, noise_eps) and L-inf PGD (pgd_eps, pgd_step, pgd_steps,
    random start), all in 1/255 units (digits: 32 / 8). Writes a per-layer CSV (layer, depth, block,
    perturbation, group [psn|random], n_units, deviation), a per-block CSV (block, perturbation, group,
    deviation = mean over the block's layers, n_layers), a trend figure and metadata JSON.
    """

    for label, value in (("noise_eps", noise_eps), ("pgd_eps", pgd_eps), ("pgd_step", pgd_step)):
        if not value > 0:
            raise ValueError(f"{label} must be positive (1/255 units), got {value}")
    if pgd_steps < 1:
        raise ValueError(f"pgd_steps must be at least 1, got {pgd_steps}")
    table = psn_unit_table(units_path, percent)
    model, ckpt, x, y, index = _load_test(model_path, test_path, n_images, seed)
    layers = nodes_of_table(model, table)
    shapes = layer_shapes(model, tuple(x.shape[1:]), layers)
    chosen = chosen_units(table, shapes)
    baseline = random_units(chosen, shapes, seed + 1)
    x_noise = uniform_noise(x, from_255(noise_eps), generator(seed + 2))
    x_pgd = pgd_images(model, x, y, from_255(pgd_eps), from_255(pgd_step), pgd_steps, generator(seed + 3), batch_size)
    deviations = {
        "noise": mean_abs_deviation(model, x, x_noise, layers, batch_size),
        "pgd": mean_abs_deviation(model, x, x_pgd, layers, batch_size),
    }
    per_layer, per_block = deviation_tables(layers, chosen, baseline, deviations)
    write_table(per_layer, out_layer_csv)
    write_table(per_block, out_block_csv)
    save_figure(plot_deviation(per_layer, f"{ckpt.get('arch', '')}: top {percent:g}% PSNs vs random units"), out_png)
    write_json(
        metadata(
            "psn_activation_deviation",
            {"model": str(model_path), "units": str(units_path), "percent": percent, "n_images": n_images,
             "noise_eps_255": noise_eps, "pgd_eps_255": pgd_eps, "pgd_step_255": pgd_step, "pgd_steps": pgd_steps},
            seed=seed,
            n_images_used=len(index),
            pgd_accuracy=clean_accuracy(model, x_pgd, y, batch_size),
        ),
        meta_path,
    )
    return per_layer


# ------------------------------------------------------------------------------------------ attack
def top_fraction_units(scores: pd.DataFrame, shapes, ratio_percent: float) -> "OrderedDict[str, np.ndarray]":
    """The top ``ratio_percent``% units of each layer by PSN score (at least one)."""
    return chosen_units(top_units_table(scores, ratio_percent), shapes)


@torch.no_grad()
def noisy_accuracy(model, layers, units: "OrderedDict[str, np.ndarray]", x, y, sigma: float,
                   gen: torch.Generator, batch_size: int = 256) -> float:
    """Accuracy when N(0, sigma^2) is added to the given units of all scored layers at once."""
    masks = {}

    def edit(name, value):
        mask = masks[name]
        noise = torch.randn(value.shape, generator=gen, dtype=value.dtype) * sigma
        return value + noise * mask.view(1, *value.shape[1:])

    correct = 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        if not masks:
            shapes = layer_shapes(model, tuple(xb.shape[1:]), layers)
            for name, idx in units.items():
                m = torch.zeros(int(np.prod(shapes[name])))
                m[torch.from_numpy(idx)] = 1.0
                masks[name] = m.view(shapes[name])
        with ActivationRecorder(model, layers, keep=False, edit={n: edit for n in units}):
            pred = model(xb).argmax(1)
        correct += int((pred == y[start : start + batch_size]).sum())
    return correct / max(1, len(x))


def attack_table(model, layers, scores: pd.DataFrame, x, y, ratios, sigma: float, seed: int,
                 batch_size: int = 256) -> pd.DataFrame:
    """Accuracy under noise on the top-ratio% PSNs and on as many random other units, per ratio."""

    shapes = layer_shapes(model, tuple(x.shape[1:]), layers)
    clean = clean_accuracy(model, x, y, batch_size)
    rows = []
    for i, ratio in enumerate(ratios):
        chosen = top_fraction_units(scores, shapes, ratio)
        baseline = random_units(chosen, shapes, seed + 1000 + i)
        for j, (group, units) in enumerate((("psn", chosen), ("random", baseline))):
            acc = noisy_accuracy(model, layers, units, x, y, sigma, generator(seed + 2000 + 2 * i + j), batch_size)
            rows.append({"ratio_percent": ratio, "group": group, "n_units": int(sum(len(u) for u in units.values())),
                         "clean_accuracy": clean, "accuracy": acc, "drop": clean - acc})
    return pd.DataFrame(rows)


def psn_attack(model_path: Path, test_path: Path, scores_path: Path, n_images: int | None, seed: int,
                out_csv: Path, out_md: Path, out_png: Path, meta_path: Path,
                ratios=(1, 2, 5, 10, 20, 30), sigma: float = 0.8, batch_size: int = 256) -> pd.DataFrame:
    """Workflow step: "attacking PSNs" (docs/methods.md, propagation-sensitive neurons).

    For each ratio r (% of each layer's units), N(0, sigma^2) is added to the top-r% PSN units of all
    scored nodes at once (forward hooks on the nodes), and, separately, to as many random units
    outside that set (seeded); fresh noise per batch. Writes a CSV (ratio_percent, group [psn|random],
    n_units, clean_accuracy, accuracy, drop), a Markdown table (one row per ratio), a figure and
    metadata JSON.
    """

    ratios = [float(r) for r in ratios]
    for r in ratios:
        if not 0 < r <= 100:
            raise ValueError(f"ratios are percentages in (0, 100], got {r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    scores = read_scores(scores_path)
    model, ckpt, x, y, index = _load_test(model_path, test_path, n_images, seed)
    layers = nodes_of_table(model, scores)
    table = attack_table(model, layers, scores, x, y, ratios, sigma, seed, batch_size)
    wide = table.pivot(index="ratio_percent", columns="group", values="accuracy").reset_index()
    wide.columns.name = None
    wide.insert(1, "clean", table["clean_accuracy"].iloc[0])
    wide = wide.rename(columns={"ratio_percent": "units noised (%)", "psn": "PSN accuracy", "random": "random accuracy"})
    wide["PSN drop"] = wide["clean"] - wide["PSN accuracy"]
    wide["random drop"] = wide["clean"] - wide["random accuracy"]
    write_table(table, out_csv)
    write_markdown(out_md, "# Attacking PSNs: accuracy when the top units are noised, against random units\n\n"
                   + markdown_table(wide, ".4f") + "\n")
    title = f"{ckpt.get('arch', '')}: N(0, {sigma:g}²) on PSNs vs random units"
    save_figure(attack_figure(table, len(index), title), out_png)
    write_json(
        metadata("psn_attack", {"model": str(model_path), "scores": str(scores_path), "n_images": n_images,
                                "ratios": ratios, "sigma": sigma}, seed=seed, n_images_used=len(index)),
        meta_path,
    )
    return table


def attack_figure(table: pd.DataFrame, n_images: int, title: str):
    """Accuracy vs share of noised units, PSN vs random, from :func:`attack_table`; bands: Wilson 95%
    intervals of each accuracy over the ``n_images`` test images (one noise draw per image)."""

    plt, sns = plotting()
    data = table.assign(accuracy_pct=100.0 * table["accuracy"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    groups = list(dict.fromkeys(data["group"]))
    palette = dict(zip(groups, sns.color_palette(n_colors=len(groups))))
    sns.lineplot(data=data, x="ratio_percent", y="accuracy_pct", hue="group", palette=palette, marker="o",
                 errorbar=None, ax=ax)
    for group, rows in data.groupby("group", sort=False):
        if n_images:
            low, high = zip(*(wilson_interval(int(round(a * n_images)), n_images) for a in rows["accuracy"]))
            ax.fill_between(rows["ratio_percent"], 100 * np.array(low), 100 * np.array(high), alpha=0.2, linewidth=0,
                            color=palette[group])
    ax.axhline(100 * table["clean_accuracy"].iloc[0], color="grey", ls="--", label="clean")
    ax.set_xlabel("units noised per layer (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"{title}\nband: Wilson 95% CI over {n_images} test images")
    ax.legend()
    return fig


# ------------------------------------------------------------------------------------------ Grad-CAM
def unit_gradcam(model: nn.Module, layer, layer_name: str, layers, x: torch.Tensor, unit: tuple) -> torch.Tensor:
    """Single-unit Grad-CAM maps (N, H_img, W_img) in [0, 1].

    The feature maps are the input of ``layer.source`` (the conv feeding the scored layer, or the block
    input for a residual sum); their gradients are those of the unit's value a[c, h, w]; channel
    weights = spatial mean of the gradient; map = ReLU(sum_k w_k F_k), upsampled bilinearly to the
    image and min-max normalised per image (all zero when constant).
    """
    if layer.source is None:
        raise ValueError(f"layer {layer_name} has no feature map for Grad-CAM")
    feats = {}

    def grab(_module, inputs):
        feats["F"] = inputs[0]

    was_training = model.training
    model.eval()
    try:
        with hooked(on_input=[(layer.source, grab)]), torch.enable_grad(), ActivationRecorder(model, OrderedDict([(layer_name, layers[layer_name])])) as rec:
            x = x.detach().clone().requires_grad_(True)  # the first conv's input needs a graph too
            model(x)
            value = rec.values[layer_name]
            target = value[(slice(None), *unit)] if value.dim() > 2 else value[:, unit[0]]
            # autograd.grad, not backward(): leaves the parameters' .grad untouched
            (grad,) = torch.autograd.grad(target.sum(), feats["F"])
    finally:
        model.train(was_training)
    fmap = feats["F"].detach()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * fmap).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo = cam.flatten(1).min(1).values.view(-1, 1, 1)
    hi = cam.flatten(1).max(1).values.view(-1, 1, 1)
    span = hi - lo
    return torch.where(span > 0, (cam - lo) / span.clamp_min(1e-12), torch.zeros_like(cam))


TIE_BREAK = {
    "high": "largest before×after term product first, then by (channel, h, w)",
    "low": "least propagating first (smallest after, then before term), then by (channel, h, w)",
}


def extreme_units(scores: pd.DataFrame, layer: str, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The n highest- and n lowest-scoring units of a layer.

    Many units share the floor score sqrt(1e-9) (their two z-scores have opposite signs), so the lowest
    scores are mostly ties: they are broken by the terms themselves, the least propagating units (smallest
    after term, then before term) first, and the highest by the largest product of the terms; (channel,
    h, w) settles what remains, so the choice is deterministic (`TIE_BREAK` says it in words). Each row also
    gets ``n_tied`` (units of the layer with exactly its score) and ``n_layer_units``, so a figure can say
    when a selection cut through a tie."""
    rows = scores[scores["layer"] == layer]
    if rows.empty:
        raise ValueError(f"score table has no layer {layer!r}")
    rows = rows.assign(_product=rows["before"] * rows["after"]) if {"before", "after"} <= set(rows.columns) else \
        rows.assign(_product=0.0, before=0.0, after=0.0)
    rows = rows.assign(n_tied=rows.groupby("score")["score"].transform("size").astype(int), n_layer_units=len(rows))
    order = rows.sort_values(["score", "_product", "channel", "h", "w"], ascending=[False, False, True, True, True])
    low = rows.sort_values(["score", "after", "before", "channel", "h", "w"], ascending=[True] * 6)
    return order.head(n).drop(columns="_product"), low.head(n).drop(columns="_product")


def selection_note(units: pd.DataFrame, extreme: str) -> str:
    """How the ``extreme`` ("high" / "low") units of :func:`extreme_units` were chosen, in words: in
    particular how many units share the boundary score when the selection cut through a tie."""
    rows = units[units["extreme"] == extreme]
    if rows.empty:
        return f"{extreme}: none"
    word = {"high": "highest", "low": "lowest"}[extreme]
    edge = rows.iloc[-1]
    n_tied, n_all = int(edge["n_tied"]), int(edge["n_layer_units"])
    shown = int((rows["score"] == edge["score"]).sum())
    if n_tied > shown:
        return (f"{word}: {n_tied} of {n_all} units tie at score {edge['score']:.3g}; shown: {shown} of them, "
                f"{TIE_BREAK[extreme]}")
    return f"{word}: {len(rows)} of {n_all} units, no tie cut"


def focus_figure(model, layers, layer_name: str, units: pd.DataFrame, x, y, pgd, n_top: int):
    """Grid: for each unit a clean row and a PGD row over its ``n_top`` most activating images, with
    the unit's Grad-CAM map over each and one colorbar for all. ``units``: rows of :func:`extreme_units`
    with a column ``extreme`` ("high" / "low"); the title says how ties were broken."""
    plt, _ = plotting()
    layer = layers[layer_name]
    with torch.no_grad(), ActivationRecorder(model, OrderedDict([(layer_name, layer)])) as rec:
        model(x)
    acts = rec.values[layer_name]
    fig, axes = plt.subplots(2 * len(units), n_top, figsize=(1.9 * n_top + 1.2, 2.0 * 2 * len(units) + 1.0),
                             squeeze=False)
    cam_image = None
    for u, (_, row) in enumerate(units.iterrows()):
        unit = (int(row["channel"]), int(row["h"]), int(row["w"]))
        value = acts[(slice(None), *unit)] if acts.dim() > 2 else acts[:, unit[0]]
        top = torch.argsort(value, descending=True, stable=True)[:n_top]
        clean_x = x[top]
        adv_x = pgd(clean_x, y[top])
        for r, (label, imgs) in enumerate((("clean", clean_x), ("PGD", adv_x))):
            cams = unit_gradcam(model, layer, layer_name, layers, imgs, unit)
            for j in range(n_top):
                ax = axes[2 * u + r, j]
                ax.axis("off")  # picture panels: pixel axes carry no information
                if j >= len(imgs):
                    continue
                ax.imshow(imgs[j].permute(1, 2, 0).clamp(0, 1).numpy())
                cam_image = ax.imshow(cams[j].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[2 * u + r, 0].set_title(
                f"{row['extreme']} c{unit[0]} ({unit[1]},{unit[2]}) s={row['score']:.3g}, {label}", fontsize="small",
                loc="left",
            )
    if cam_image is not None:  # an opaque twin of the overlays' scale: their alpha would wash out the bar
        from matplotlib.cm import ScalarMappable

        fig.colorbar(ScalarMappable(norm=cam_image.norm, cmap=cam_image.get_cmap()), ax=axes, shrink=0.5,
                     label="Grad-CAM (min-max normalised per image)")
    width = max(60, int(13 * n_top))  # characters that fit over the grid
    notes = "\n".join(textwrap.fill(selection_note(units, e), width) for e in ("high", "low")
                      if (units["extreme"] == e).any())
    fig.suptitle(f"{layer_name}: single-unit Grad-CAM over each unit's top-{n_top} activating images\n{notes}",
                 fontsize="small")
    return fig


def psn_heatmaps(model_path: Path, test_path: Path, scores_path: Path, layers: list[str], out_pngs: list[Path],
                   meta_path: Path, n_units: int = 3, n_top: int = 5, n_images: int | None = None, seed: int = 0,
                   pgd_eps: float = 8, pgd_step: float = 2, pgd_steps: int = 40) -> None:
    """Workflow step: focus-region heatmaps of the ``n_units`` highest- and lowest-scoring units of
    each layer in ``layers`` (one PNG per layer, paired with ``out_pngs``, and a PDF beside each).

    For each unit its ``n_top`` most activating test images (among ``n_images`` seeded test images;
    None: all) in a clean row, and their L-inf PGD versions (pgd_eps / pgd_step in 1/255 units, random
    start) in the row below, each overlaid with the unit's Grad-CAM map (:func:`unit_gradcam`). How the
    units were chosen, and how many share the boundary score (:func:`selection_note`), is in each figure's
    title and in the metadata JSON (``selections``).
    """

    layers_wanted, out_pngs = list(layers), list(out_pngs)
    if len(layers_wanted) != len(out_pngs):
        raise ValueError(f"{len(layers_wanted)} layers but {len(out_pngs)} output files")
    if n_units < 1 or n_top < 1:
        raise ValueError("n_units and n_top must be at least 1")
    scores = read_scores(scores_path)
    model, ckpt, x, y, index = _load_test(model_path, test_path, n_images, seed)
    layers_all = nodes_of_table(model, scores)
    unknown = [n for n in layers_wanted if n not in layers_all]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; the score table's nodes are {list(layers_all)}")
    gen = generator(seed + 1)

    def pgd(xb, yb):
        return pgd_images(model, xb, yb, from_255(pgd_eps), from_255(pgd_step), pgd_steps, gen)

    selections = {}
    for name, path in zip(layers_wanted, out_pngs):
        high, low = extreme_units(scores, name, n_units)
        units = pd.concat([high.assign(extreme="high"), low.assign(extreme="low")], ignore_index=True)
        save_figure(focus_figure(model, layers_all, name, units, x, y, pgd, n_top), path)
        selections[name] = [selection_note(units, e) for e in ("high", "low")]
    write_json(
        metadata("psn_focus_heatmaps", {"model": str(model_path), "scores": str(scores_path), "layers": layers_wanted,
                                         "n_units": n_units, "n_top": n_top, "n_images": n_images,
                                         "pgd_eps_255": pgd_eps, "pgd_step_255": pgd_step, "pgd_steps": pgd_steps},
                 seed=seed, n_images_used=len(index), selections=selections),
        meta_path,
    )


# ------------------------------------------------------------------------------------------ agreement
def agreement_table(scores: pd.DataFrame, sensitivity: pd.DataFrame, k_percent: float) -> pd.DataFrame:
    """Per scored layer with a conv counterpart: Spearman correlation and top-k% Jaccard between the
    PSN ranking aggregated to channels (mean score over h, w) and the channel sensitivity ranking."""
    from scipy.stats import spearmanr

    if not 0 < k_percent <= 100:
        raise ValueError(f"k_percent must be in (0, 100], got {k_percent}")
    missing = [c for c in ("layer", "channel", "sensitivity") if c not in sensitivity.columns]
    if missing:
        raise ValueError(f"sensitivity table lacks columns {missing}")
    per_channel = scores.groupby(["depth", "layer", "conv", "channel"], sort=True)["score"].mean().reset_index()
    rows = []
    for (depth, layer, conv), group in per_channel.groupby(["depth", "layer", "conv"], sort=True):
        if not conv:
            continue
        sens = sensitivity[sensitivity["layer"] == conv]
        if sens.empty:
            continue
        merged = group.merge(sens[["channel", "sensitivity"]], on="channel", how="inner")
        if len(merged) != len(group) or len(merged) != len(sens):
            raise ValueError(f"layer {layer}: {len(group)} PSN channels vs {len(sens)} sensitivity channels of {conv}")
        k = max(1, int(math.ceil(len(merged) * k_percent / 100.0)))
        top_psn = merged.sort_values(["score", "channel"], ascending=[False, True]).head(k)["channel"]
        top_sns = merged.sort_values(["sensitivity", "channel"], ascending=[False, True]).head(k)["channel"]
        if len(merged) > 1 and merged["score"].nunique() > 1 and merged["sensitivity"].nunique() > 1:
            rho, p = spearmanr(merged["score"], merged["sensitivity"])
        else:
            rho, p = float("nan"), float("nan")
        rows.append({"layer": layer, "conv": conv, "depth": int(depth), "n_channels": len(merged), "k": k,
                     "spearman": float(rho), "p_value": float(p), "jaccard": jaccard(top_psn, top_sns)})
    if not rows:
        raise ValueError("no scored layer has a conv counterpart in the sensitivity table")
    return pd.DataFrame(rows)


def psn_agreement(scores_path: Path, sensitivity_csv: Path, k_percent: float, out_csv: Path, out_md: Path,
                     out_png: Path) -> pd.DataFrame:
    """Workflow step: agreement between PSN (aggregated to channels) and neuron sensitivity (SNS).

    Every PSN node that belongs to a conv layer (``convN``, ``convN.bn``, ``convN.relu``, ...) is compared
    with that conv layer's sensitivity; a residual sum ``lXbYadd`` (and the block output) with the block's second conv
    ``lXbYc2`` (the residual branch; the sum also carries the shortcut). Writes a CSV (layer, conv,
    depth, n_channels, k, spearman, p_value, jaccard), a Markdown table and a heatmap.
    """
    scores = read_scores(scores_path)
    sensitivity = pd.read_csv(sensitivity_csv)
    table = agreement_table(scores, sensitivity, k_percent)
    write_table(table, out_csv, out_md, floatfmt=".4f",
                title=f"PSN vs neuron sensitivity: rank agreement and top-{k_percent:g}% overlap per layer")
    save_figure(agreement_figure(table, k_percent), out_png)
    return table


def agreement_figure(table: pd.DataFrame, k_percent: float):
    """Heatmap of :func:`agreement_table`: one row per scored layer, Spearman rho and top-k% Jaccard."""
    plt, sns = plotting()
    data = table.set_index("layer")[["spearman", "jaccard"]].rename(
        columns={"spearman": "Spearman ρ", "jaccard": f"top-{k_percent:g}% Jaccard"}
    )
    fig, ax = plt.subplots(figsize=(5.2, 0.35 * len(data) + 2.0))
    sns.heatmap(data, annot=True, fmt=".2f", cmap="vlag", vmin=-1, vmax=1, ax=ax, cbar=True,
                cbar_kws={"label": "agreement (ρ in [-1, 1], Jaccard in [0, 1])"})
    ax.set_xlabel("agreement measure")
    ax.set_ylabel(f"scored {LAYER_LABEL}")
    ax.set_title("PSN vs neuron sensitivity (per channel)")
    return fig
