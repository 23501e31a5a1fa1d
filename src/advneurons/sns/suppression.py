"""Suppression study (TIP Fig 9, ECCV Fig 3a): scale the outputs of sensitive channels by beta <= 1.

Which channels: the top `top_percent`% of every conv layer by sensitivity (the sensitivity CSV of
`neuron_sensitivity`, untargeted PGD pairs), all conv layers at once, as the paper suppresses "the top-10%
sensitive neurons" of the model. Control: the same number of channels per layer drawn at random (seeded) from
the non-sensitive channels of that layer, `n_random` repeats averaged.

Where: after the activation, i.e. on the output of the ReLU that follows each conv layer
(`sns_common.activation_names`; an external model: its ReLU module, or the input of a functional or shared ReLU,
`ExternalModel.activation_sites`; the metadata lists the conv layers left out): VGG16 relu{i} after conv{i}; ResNet18 relu1 after the stem conv1, block.relu1
after l{s}b{b}c1 and block.relu2 after l{s}b{b}c2 (relu2 acts after the residual add, so for c2 the scaled
channel also carries the shortcut). Shortcut projections (l{s}b1sc) and fc have no ReLU of their own and are
not suppressed.

Attacks are white-box against the suppressed model (the hooks stay in place while they run). Every model
variant sees the same images and the same random draws (random starts, noise).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from advneurons.models.hooks import hooked
from advneurons.runtime import atomic_path, generator, metadata, model_device, write_json
from advneurons.evaluation.accuracy import clean_correct
from advneurons.evaluation.sensitivity import top_channels
from advneurons.io import write_table
from advneurons.report.figures import grid, plotting, save_figure
from advneurons.sns.common import activation_modules, activation_names, resolve_attack
from advneurons.data import load_split
from advneurons.evaluation.paired_stats import wilson_interval
from advneurons.evaluation.pairs import select_subset
from advneurons.models.checkpoint import load_model
from advneurons.models.inference import for_attacks

log = logging.getLogger(__name__)

DEFAULT_BETAS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)
CLEAN = "clean"


@contextmanager
def scaled_channels(modules: dict[str, nn.Module], channels: dict[str, Sequence[int]], beta: float):
    """Multiply the listed output channels of each named module by `beta` while the block runs."""
    def make_hook(index: torch.Tensor):
        def hook(_module, _inputs, output):
            scale = torch.ones(output.shape[1], dtype=output.dtype, device=output.device)
            scale[index.to(output.device)] = beta
            return output * scale.view(1, -1, *([1] * (output.dim() - 2)))

        return hook

    scaled = [] if beta == 1.0 else [
        (modules[name], make_hook(torch.as_tensor(list(chans), dtype=torch.long)))
        for name, chans in channels.items() if len(chans)
    ]
    with hooked(on_output=scaled):
        yield


def sensitive_selection(model: nn.Module, sensitivity: pd.DataFrame, top_percent: float) -> dict[str, list[int]]:
    """ReLU name -> top `top_percent`% channels of the conv layer it follows, by sensitivity.

    Fails with a clear message if the table does not fit the model (missing layers, wrong channel counts).
    """
    act = activation_names(model)
    layers = model.layers()
    missing = [name for name in act if name not in set(sensitivity["layer"])]
    if missing:
        raise ValueError(f"the sensitivity table lacks conv layer(s) {', '.join(missing)} of this model")
    table = sensitivity[sensitivity["layer"].isin(list(act))]
    for name in act:
        n_table = int((table["layer"] == name).sum())
        n_model = layers[name].out_channels
        if n_table != n_model:
            raise ValueError(f"layer {name}: sensitivity table has {n_table} channels, the model {n_model}")
    picked = top_channels(table, top_percent)
    return {
        act[layer]: sel.sort_values("rank")["channel"].astype(int).tolist()
        for layer, sel in picked.groupby("layer", sort=False)
    }


def random_selection(model: nn.Module, sensitive: dict[str, list[int]], seed: int) -> dict[str, list[int]]:
    """As many channels per ReLU as `sensitive` has, drawn (seeded) from the channels not in it."""
    conv_of = {relu: conv for conv, relu in activation_names(model).items()}
    layers = model.layers()
    out = {}
    for i, (name, chans) in enumerate(sensitive.items()):
        n = layers[conv_of[name]].out_channels
        others = np.setdiff1d(np.arange(n), np.asarray(chans, dtype=np.int64))
        if len(others) < len(chans):
            raise ValueError(f"{name}: {len(chans)} sensitive channels leave only {len(others)} others to draw from")
        perm = torch.randperm(len(others), generator=generator(seed * 1009 + i)).numpy()
        out[name] = sorted(int(c) for c in others[perm[: len(chans)]])
    return out


def evaluate_variant_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    perturbations: dict[str, Any],
    seed: int,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """Per image, clean and under each perturbation (crafted against `model` as it is now): classified
    correctly? (bool arrays in the order of `x`)"""
    out = {CLEAN: clean_correct(model, x, y, batch_size).numpy()}
    for j, (name, spec) in enumerate(perturbations.items()):
        attack = resolve_attack(spec)
        gen = generator(seed + 101 * (j + 1))  # the same draws for every model variant
        adv = torch.cat(
            [attack(model, x[i : i + batch_size], y[i : i + batch_size], gen) for i in range(0, len(x), batch_size)]
        )
        out[name] = clean_correct(model, adv, y, batch_size).numpy()
    return out


def _accuracy(correct: np.ndarray) -> float:
    # the same number clean_accuracy computes: correct images / images (NaN for none)
    return float(correct.sum()) / len(correct) if len(correct) else float("nan")


def encode_correct(correct) -> str:
    """Per-image correctness as a string, "y" (correct) or "n" per image."""
    return "".join("y" if c else "n" for c in np.asarray(correct, dtype=bool))


def decode_counts(text) -> np.ndarray:
    """The per-image counts of `suppression_summary`'s correct_count_by_image ("2,3,0,...") as integers."""
    if not isinstance(text, str) or not text:
        return np.zeros(0, dtype=np.int64)
    return np.array([int(v) for v in text.split(",")], dtype=np.int64)


def suppression_curves(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    sensitive: dict[str, list[int]],
    perturbations: dict[str, Any],
    betas: Sequence[float] = DEFAULT_BETAS,
    n_random: int = 3,
    seed: int = 0,
    batch_size: int = 200,
) -> pd.DataFrame:
    """Accuracy per (selection, repeat, beta, perturbation); selection is "sensitive" or "random"; with each
    row, its per-image results (`correct_by_image`, `encode_correct`), which the claims test.

    beta = 1 is the unmodified model: evaluated once and reported for both selections (every repeat).
    """
    model.eval()
    resolved = {name: resolve_attack(a) for name, a in perturbations.items()}
    if CLEAN in resolved:
        raise ValueError(f"{CLEAN!r} is reserved for clean accuracy; rename that perturbation")
    relus = activation_modules(model)
    selections = [("sensitive", 0, sensitive)] + [
        ("random", r, random_selection(model, sensitive, seed + 1 + r)) for r in range(n_random)
    ]
    rows = []
    base = None
    plan = [(beta, sel) for beta in betas for sel in selections]
    for beta, (kind, repeat, chans) in tqdm(plan, desc="suppression", mininterval=5.0):
        if beta == 1.0:
            if base is None:
                base = evaluate_variant_correct(model, x, y, resolved, seed, batch_size)
            result = base
        else:
            with scaled_channels(relus, chans, beta):
                result = evaluate_variant_correct(model, x, y, resolved, seed, batch_size)
        for name, correct in result.items():
            rows.append(
                {
                    "selection": kind,
                    "repeat": repeat,
                    "beta": float(beta),
                    "perturbation": name,
                    "accuracy": _accuracy(correct),
                    "n_images": len(x),
                    "correct_by_image": encode_correct(correct),
                }
            )
    return pd.DataFrame(rows)


def suppression_summary(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean (and std over random repeats) accuracy in percent per beta, perturbation and selection; with the
    per-image results of the curves, `correct_count_by_image`: per image, in how many of the cell's repeats it
    is classified correctly ("2,3,0,..."; the claims average each image over its repeats and test over images)."""
    keys = ["perturbation", "selection", "beta"]
    grouped = curves.groupby(keys, sort=False)["accuracy"]
    summary = grouped.agg(["mean", "std", "count"]).reset_index()
    summary["mean"] = 100 * summary["mean"]
    summary["std"] = 100 * summary["std"].fillna(0.0)
    summary = summary.rename(columns={"mean": "accuracy_pct", "std": "std_pct", "count": "n_repeats"})
    # images per evaluation (the same for every cell)
    summary["n_images"] = int(curves["n_images"].iloc[0]) if len(curves) else 0
    if "correct_by_image" in curves:
        counts = curves.groupby(keys, sort=False)["correct_by_image"].agg(
            lambda texts: ",".join(map(str, np.sum([[c == "y" for c in t] for t in texts], axis=0))))
        summary = summary.merge(counts.rename("correct_count_by_image").reset_index(), on=keys, how="left")
    return summary.sort_values(["perturbation", "selection", "beta"], ascending=[True, True, False], kind="stable")


def suppression_wide(summary: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """One row per beta, one column per (perturbation, selection), accuracies in percent."""
    wide = summary.pivot_table(index="beta", columns=["perturbation", "selection"], values="accuracy_pct")
    cols = [(p, s) for p in order for s in ("sensitive", "random") if (p, s) in wide.columns]
    wide = wide[cols].sort_index(ascending=False)
    wide.columns = [f"{p} {s}" for p, s in cols]
    return wide.reset_index()


def suppression_study(
    model_path: Path,
    test_path: Path,
    sensitivity_csv: Path,
    perturbations: dict[str, Any],
    out_csv: Path,
    summary_csv: Path,
    out_md: Path,
    figure_png: Path,
    meta_path: Path,
    betas: Sequence[float] = DEFAULT_BETAS,
    top_percent: float = 10.0,
    n_random: int = 3,
    n_images: int | None = 200,
    seed: int = 0,
    batch_size: int = 200,
    panel_dir: Path | None = None,
    title: str = "",
) -> pd.DataFrame:
    """Workflow step: accuracy as the top sensitive vs random channels are scaled by beta (TIP Fig 9).

    `perturbations`: name -> attack config dict (1/255 units, `AttackSpec.from_config`), AttackSpec-like
    object or callable f(model, x, y, generator). Outputs: `out_csv` (every selection/repeat/beta/perturbation),
    `summary_csv` (means over repeats, percent), `out_md` (one row per beta, one column per perturbation and
    selection), `figure_png` (one panel per perturbation incl. clean: sensitive vs random, random with ±1 SD
    over the draws, sensitive with a Wilson 95% band over the images; a PDF beside it), optional `panel_dir`
    with one PNG + PDF per perturbation, and `meta_path`.
    """

    if not betas or any(not 0 <= b <= 1 for b in betas):
        raise ValueError(f"betas must lie in [0, 1], got {list(betas)}")
    if n_random < 1:
        raise ValueError("n_random must be at least 1")
    resolved = {name: resolve_attack(a) for name, a in perturbations.items()}  # bad attacks fail here
    # Hooks scale ReLU outputs, which folding BatchNorm into the convolutions leaves as they are.
    model = for_attacks(load_model(model_path)[0])
    sensitive = sensitive_selection(model, pd.read_csv(sensitivity_csv), top_percent)
    images, labels = load_split(test_path)
    index = torch.from_numpy(select_subset(len(labels), n_images, seed))
    where = model_device(model)  # attacks craft on the model's device (for_attacks put it on the job's)
    x, y = images[index].to(where), labels[index].to(where)
    curves = suppression_curves(model, x, y, sensitive, resolved, betas, n_random, seed, batch_size)
    summary = suppression_summary(curves)
    order = [CLEAN, *resolved]
    wide = suppression_wide(summary, order)
    with atomic_path(out_csv) as tmp:
        curves.to_csv(tmp, index=False)
    write_table(summary, summary_csv, None, "")
    heading = f"Suppression of sensitive vs random channels{' — ' + title if title else ''}: accuracy (%)"
    described = "; ".join(f"{name}: {p.description}" for name, p in resolved.items())
    notes = (
        f"Top {top_percent:g}% sensitive channels of every conv layer (n={sum(map(len, sensitive.values()))}) or "
        f"as many random non-sensitive ones (mean of {n_random} seeded draws) scaled by beta after their ReLU; "
        f"{len(x)} test images; attacks white-box against the suppressed model. Perturbations: {described}."
    )
    write_table(wide, None, out_md, heading, notes)
    _suppression_figure(curves, order, figure_png, heading, panel_dir)
    write_json(
        metadata(
            "suppression_study",
            {
                "betas": list(betas),
                "top_percent": top_percent,
                "n_random": n_random,
                "n_images": n_images,
                "batch_size": batch_size,
                "model": str(model_path),
                "sensitivity": str(sensitivity_csv),
                "perturbations": {
                    k: (v if isinstance(v, dict) else resolved[k].description) for k, v in perturbations.items()
                },
            },
            seed=seed,
            perturbation_descriptions={k: p.description for k, p in resolved.items()},
            suppressed_channels=sensitive,
            # conv layers without an activation of their own (shortcut projections; in an external model any conv
            # that no ReLU reads directly)
            layers_not_suppressed=[n for n in model.layers() if n != "fc" and n not in activation_names(model)],
            n_images_used=len(x),
        ),
        meta_path,
    )
    return curves


def _band_note(curves: pd.DataFrame) -> str:
    n_random = curves.loc[curves["selection"] == "random", "repeat"].nunique()
    n_images = int(curves["n_images"].iloc[0]) if len(curves) else 0
    return f"bands: random = ±1 SD over {n_random} random draws; sensitive = Wilson 95% CI over {n_images} images"


def _draw_suppression(ax, curves: pd.DataFrame, name: str) -> None:
    """One perturbation's panel: accuracy (%) vs beta, sensitive with a Wilson 95% band over the images (one
    selection, so no spread over draws), random with ±1 SD over its seeded draws."""

    _, sns = plotting()
    palette = {"sensitive": "#c44e52", "random": "#4c72b0"}
    sub = curves[curves["perturbation"] == name].assign(accuracy_pct=lambda d: 100 * d["accuracy"])
    sns.lineplot(data=sub, x="beta", y="accuracy_pct", hue="selection", hue_order=["sensitive", "random"],
                 palette=palette, marker="o", errorbar="sd", ax=ax)
    sens = sub[sub["selection"] == "sensitive"].sort_values("beta")
    if len(sens):
        bounds = [wilson_interval(int(round(a * n)), int(n)) for a, n in zip(sens["accuracy"], sens["n_images"])]
        low, high = (100 * np.array(b) for b in zip(*bounds))
        ax.fill_between(sens["beta"], low, high, color=palette["sensitive"], alpha=0.2, linewidth=0)
    ax.set_xlim(max(sub["beta"]) + 0.01, min(sub["beta"]) - 0.01)  # beta decreasing to the right, as in Fig 9
    ax.set_ylim(-2, 102)
    ax.set_title(name)
    ax.set_xlabel("β (scale on the selected channels)")
    ax.set_ylabel("accuracy (%)")
    ax.legend(title="channels")


def suppression_figure(curves: pd.DataFrame, order: Sequence[str], title: str = ""):
    """TIP Fig 9: one panel per perturbation in `order` (clean first), rows of at most three panels."""
    fig, axes = grid(len(order), panel_size=(4.4, 3.6))
    for ax, name in zip(axes, order):
        _draw_suppression(ax, curves, name)
    fig.suptitle(f"{title}\n{_band_note(curves)}")
    return fig


def suppression_panel(curves: pd.DataFrame, name: str, title: str = ""):
    """The panel of one perturbation as a figure of its own."""
    plt, _ = plotting()
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    _draw_suppression(ax, curves, name)
    fig.suptitle(f"{title}\n{_band_note(curves)}" if title else _band_note(curves))
    return fig


def _suppression_figure(curves: pd.DataFrame, order: Sequence[str], path: Path, title: str, panel_dir: Path | None):
    save_figure(suppression_figure(curves, order, title), path)
    if panel_dir is not None:
        Path(panel_dir).mkdir(parents=True, exist_ok=True)
        for name in order:
            save_figure(suppression_panel(curves, name), Path(panel_dir) / f"{name}.png")
