"""Similarity between neuron selections: sensitive vs important neurons, and across target classes.

* Spearman's rank correlation (TIP Eq 6) between the full rankings of the penultimate channels by
  sensitivity and by importance votes; ties (e.g. channels with no votes) get average ranks (scipy).
* Levenshtein similarity (TIP Eq 7-8) S(a, b) = 1 - edit_distance(a, b) / (|a| + |b|) over ordered
  sequences of channel indices; insertion, deletion and substitution each cost 1.
* Jaccard index (ECCV Eq 6) |A ∩ B| / |A ∪ B|; total Jaccard (TIP Eq 10) |∩ sets| / |∪ sets|; average pair
  Jaccard (ECCV Eq 7) and average pair Levenshtein similarity (TIP Eq 9) over all pairs y != y'.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from advneurons.io import write_table
from advneurons.report.figures import LAYER_LABEL, figure_width, grid, layer_ticks, plotting, save_figure
from advneurons.report.markdown import markdown_table, write_markdown
from advneurons.runtime import metadata, write_json
from advneurons.evaluation.sensitivity import top_channels
from advneurons.sns.common import PENULTIMATE
from advneurons.sns.importance import DEFAULT_K, layer_order, ranked_by

# Means over the ten CIFAR-10 target classes, VGG16 vanilla (TIP Sec. IV-B).
PAPER_CIFAR10_VGG16 = {
    "spearman": {"mean": 0.428, "min": 0.36, "max": 0.53},
    "levenshtein": {"mean": 0.554, "min": 0.46, "max": 0.72},
}


# ------------------------------------------------------------------------------------------------ metrics
def levenshtein_distance(a: Sequence, b: Sequence) -> int:
    """Edit distance between two sequences of hashable items (unit costs)."""
    from rapidfuzz.distance import Levenshtein  # loaded by the steps that compare sequences only

    return int(Levenshtein.distance(list(a), list(b)))


def levenshtein_similarity(a: Sequence, b: Sequence) -> float:
    """TIP Eq 8: 1 - distance / (|a| + |b|); two empty sequences are identical (1.0)."""
    total = len(a) + len(b)
    if total == 0:
        return 1.0
    return 1.0 - levenshtein_distance(a, b) / total


def jaccard(a, b) -> float:
    """|A ∩ B| / |A ∪ B| of two collections taken as sets; NaN when both are empty."""
    a, b = set(a), set(b)
    union = a | b
    return len(a & b) / len(union) if union else float("nan")


def total_jaccard(sets: Sequence) -> float:
    """TIP Eq 10: |∩ sets| / |∪ sets|; NaN for no sets or an empty union."""
    sets = [set(s) for s in sets]
    if not sets:
        return float("nan")
    union = set().union(*sets)
    return len(set.intersection(*sets)) / len(union) if union else float("nan")


def average_pair(metric: Callable[[Sequence, Sequence], float], seqs: Sequence[Sequence]) -> float:
    """Mean of a symmetric metric over all pairs y != y' (TIP Eq 9, ECCV Eq 7); NaN for fewer than two."""
    values = [metric(a, b) for a, b in itertools.combinations(seqs, 2)]
    return float(np.mean(values)) if values else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Spearman's rho and its p-value; NaN when either ranking is constant."""
    from scipy import stats  # loaded by the steps that rank only

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"rankings differ in length: {len(a)} vs {len(b)}")
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.spearmanr(a, b)
    return float(result.statistic), float(result.pvalue)


def chance_jaccard(n: int, k: int) -> float:
    """Expected Jaccard index of two independent uniformly random k-subsets of n channels (hypergeometric)."""
    from scipy import stats

    if not 0 < k <= n:
        raise ValueError(f"need 0 < k <= n, got k={k}, n={n}")
    overlap = np.arange(max(0, 2 * k - n), k + 1)
    pmf = stats.hypergeom.pmf(overlap, n, k, k)
    return float(np.sum(pmf * overlap / (2 * k - overlap)))


def chance_levenshtein(n: int, k: int, samples: int = 2000, seed: int = 0) -> float:
    """Monte-Carlo mean Levenshtein similarity of two independent random ordered k-sequences of n channels."""
    if not 0 < k <= n:
        raise ValueError(f"need 0 < k <= n, got k={k}, n={n}")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(samples):
        total += levenshtein_similarity(rng.permutation(n)[:k].tolist(), rng.permutation(n)[:k].tolist())
    return total / samples


# ---------------------------------------------------------------------------- importance vs sensitivity
def importance_vs_sensitivity(sensitivity: pd.DataFrame, importance: pd.DataFrame, k: int = DEFAULT_K) -> pd.DataFrame:
    """Per target class: Spearman, Levenshtein similarity and Jaccard of Omega^y_{L-1} vs Gamma^y.

    `sensitivity` and `importance` are the tables of `targeted_neurons`. Omega (Gamma) = the top-k
    penultimate channels by sensitivity (votes), best first, as space-separated channel indices.
    """
    penult = sensitivity[sensitivity["layer"] == PENULTIMATE]
    if penult.empty:
        raise ValueError(f"the sensitivity table has no {PENULTIMATE!r} layer; make it with targeted_neurons")
    rows = []
    for target, imp in importance.groupby("target", sort=True):
        sens = penult[penult["target"] == target].sort_values("channel")
        imp = imp.sort_values("channel")
        if len(sens) != len(imp) or not np.array_equal(sens["channel"].to_numpy(), imp["channel"].to_numpy()):
            raise ValueError(f"target {target}: sensitivity and importance cover different channels")
        sigma, votes = sens["sensitivity"].to_numpy(), imp["votes"].to_numpy()
        omega, gamma = ranked_by(sigma, k), ranked_by(votes, k)
        rho, p = spearman(sigma, votes)
        # The papers' importance itself (mean phi over the set), next to the vote-based ranking of Gamma.
        rho_phi, p_phi = spearman(sigma, imp["mean_phi"].to_numpy()) if "mean_phi" in imp else (np.nan, np.nan)
        rows.append(
            {
                "target": int(target),
                "n_pairs": int(imp["n_pairs"].iloc[0]),
                "n_channels": len(sigma),
                "k": len(omega),
                "spearman": rho,
                "spearman_p": p,
                "spearman_mean_phi": rho_phi,
                "spearman_mean_phi_p": p_phi,
                "levenshtein_similarity": levenshtein_similarity(gamma, omega),
                "jaccard": jaccard(gamma, omega),
                "gamma": " ".join(map(str, gamma)),
                "omega": " ".join(map(str, omega)),
            }
        )
    return pd.DataFrame(rows)


def importance_summary(per_class: pd.DataFrame) -> pd.DataFrame:
    """Mean (and range) over classes of each metric, the value two random selections would get, and the paper's.

    chance: Spearman 0; Jaccard the hypergeometric expectation; Levenshtein a seeded Monte-Carlo estimate for
    two random ordered top-k sequences of the same number of channels.
    """
    rows = []
    n = int(per_class["n_channels"].max()) if len(per_class) else 0
    k = int(per_class["k"].max()) if len(per_class) else 0
    chance = {"spearman": 0.0}
    if n and k:
        chance["jaccard"] = chance_jaccard(n, k)
        chance["levenshtein_similarity"] = chance_levenshtein(n, k)
    for metric, paper_key in (("spearman", "spearman"), ("levenshtein_similarity", "levenshtein"), ("jaccard", None)):
        values = per_class[metric].dropna()
        paper = PAPER_CIFAR10_VGG16.get(paper_key or "", {})
        rows.append(
            {
                "metric": metric,
                "mean": values.mean() if len(values) else np.nan,
                "min": values.min() if len(values) else np.nan,
                "max": values.max() if len(values) else np.nan,
                "n_classes": len(values),
                "chance": chance.get(metric, np.nan),
                "paper_mean_cifar10_vgg16": paper.get("mean", np.nan),
                "paper_range_cifar10_vgg16": f"{paper['min']}..{paper['max']}" if paper else "n/a",
            }
        )
    return pd.DataFrame(rows)


def importance_report(
    sensitivity_csv: Path,
    importance_csv: Path,
    k: int,
    out_csv: Path,
    out_md: Path,
    summary_csv: Path,
    figure_png: Path,
    meta_path: Path,
    title: str = "",
) -> pd.DataFrame:
    """Workflow step: per-class Spearman / Levenshtein / Jaccard of sensitive vs important neurons.

    Inputs: the two CSVs of `targeted_neurons`. Outputs: `out_csv` (one row per target class),
    `summary_csv` (mean, range beside the paper's CIFAR-10 VGG16 means), `out_md` (both tables),
    `figure_png` (bar chart per class with the mean as a line, one panel per metric), `meta_path`.
    """
    sensitivity, importance = pd.read_csv(sensitivity_csv), pd.read_csv(importance_csv)
    per_class = importance_vs_sensitivity(sensitivity, importance, k)
    summary = importance_summary(per_class)
    write_table(per_class, out_csv, None, "")
    write_table(summary, summary_csv, None, "")
    heading = f"Sensitive vs important penultimate neurons{' — ' + title if title else ''} (k={k})"
    notes = (
        "Per target class y: Omega = top-k penultimate channels by sensitivity over the successful targeted "
        "PGD pairs towards y; Gamma = top-k by weighted importance votes. Spearman over the full channel "
        "rankings (TIP Eq 6), Levenshtein similarity of the ordered top-k sequences (TIP Eq 8), Jaccard of the "
        "sets (ECCV Eq 6). Paper: VGG16 on CIFAR-10."
    )
    md = (
        f"# {heading}\n\n{notes}\n\n## Summary\n\n{markdown_table(summary, '.3f')}\n\n"
        f"## Per target class\n\n{markdown_table(per_class, '.3f')}\n"
    )
    write_markdown(out_md, md)
    save_figure(importance_figure(per_class, heading), figure_png)
    write_json(
        metadata(
            "importance_vs_sensitivity",
            {"k": k, "sensitivity": str(sensitivity_csv), "importance": str(importance_csv)},
            summary=summary.to_dict(orient="records"),
        ),
        meta_path,
    )
    return per_class


def importance_figure(per_class: pd.DataFrame, title: str = ""):
    """TIP Fig 3: per target class, Spearman / Levenshtein / Jaccard of sensitive vs important neurons (one
    value per class: no error bars), with their mean and the paper's mean as lines."""
    _, sns = plotting()
    metrics = [
        ("spearman", "Spearman ρ (TIP Eq 6)"),
        ("levenshtein_similarity", "Levenshtein similarity (TIP Eq 8)"),
        ("jaccard", "Jaccard (ECCV Eq 6)"),
    ]
    fig, axes = grid(len(metrics), panel_size=(4.6, 3.6))
    for ax, (col, label) in zip(axes, metrics):
        data = per_class[["target", col]].copy()
        sns.barplot(data=data, x="target", y=col, ax=ax, color="#4c72b0", errorbar=None)
        mean = data[col].mean()
        if np.isfinite(mean):
            ax.axhline(mean, color="#c44e52", ls="--", label=f"mean {mean:.3f}")
        paper = {"spearman": "spearman", "levenshtein_similarity": "levenshtein"}.get(col)
        if paper:
            ax.axhline(PAPER_CIFAR10_VGG16[paper]["mean"], color="grey", ls=":", label="paper (CIFAR-10 VGG16)")
        ax.set_title(label)
        ax.set_xlabel("target class")
        ax.set_ylabel(label.split(" (")[0])
        ax.legend(loc="lower right")
    fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------------------ across layers
def compute_layer_similarity(
    sensitivity: pd.DataFrame, top_percent: float = 10.0, exclude_layers: Sequence[str] = ("fc",)
) -> pd.DataFrame:
    """Per layer, across target classes: total Jaccard, average pair Jaccard and Levenshtein similarity.

    Omega^y_l = the top `top_percent`% channels (at least one) of layer l by sensitivity over the targeted
    set of class y, ordered by sensitivity.
    """
    order = layer_order(sensitivity)
    data = sensitivity[~sensitivity["layer"].isin(list(exclude_layers))]
    per_target: dict[str, list[list[int]]] = {}
    n_channels: dict[str, int] = {}
    for _, group in data.groupby("target", sort=True):
        picked = top_channels(group, top_percent)
        for layer, sel in picked.groupby("layer", sort=False):
            per_target.setdefault(str(layer), []).append(sel.sort_values("rank")["channel"].astype(int).tolist())
            n_channels[str(layer)] = int(sel["n_channels"].iloc[0])
    rows = []
    for layer, depth in order.items():
        if layer not in per_target:
            continue
        seqs = per_target[layer]
        rows.append(
            {
                "layer": layer,
                "depth": depth,
                "n_channels": n_channels[layer],
                "k": len(seqs[0]),
                "n_targets": len(seqs),
                "total_jaccard": total_jaccard(seqs),
                "avg_pair_jaccard": average_pair(jaccard, seqs),
                "avg_pair_levenshtein": average_pair(levenshtein_similarity, seqs),
            }
        )
    return pd.DataFrame(rows)


def fc_top_unit_is_target(sensitivity: pd.DataFrame) -> pd.DataFrame:
    """Per target: the most sensitive fc unit (logit) and whether it is the target (ECCV Sec. 3.3)."""
    fc = sensitivity[sensitivity["layer"] == "fc"]
    rows = []
    for target, group in fc.groupby("target", sort=True):
        top = ranked_by(group.sort_values("channel")["sensitivity"].to_numpy(), 1)[0]
        rows.append({"target": int(target), "most_sensitive_logit": top, "matches": top == int(target)})
    return pd.DataFrame(rows, columns=["target", "most_sensitive_logit", "matches"])


def layer_similarity(
    sensitivity_csv: Path,
    top_percent: float,
    out_csv: Path,
    out_md: Path,
    figure_png: Path,
    meta_path: Path,
    exclude_layers: Sequence[str] = ("fc",),
    title: str = "",
) -> pd.DataFrame:
    """Workflow step: similarity of the per-target sensitive neurons of each layer (TIP Fig 8, ECCV Fig 2b).

    Input: the sensitivity CSV of `targeted_neurons`. Outputs: `out_csv`/`out_md` (one row per layer:
    total_jaccard, avg_pair_jaccard, avg_pair_levenshtein), `figure_png` (the three over layer depth) and
    `meta_path` (also whether the most sensitive fc unit of each targeted set is its target class).
    """
    sensitivity = pd.read_csv(sensitivity_csv)
    table = compute_layer_similarity(sensitivity, top_percent, exclude_layers)
    fc_check = fc_top_unit_is_target(sensitivity)
    heading = (
        f"Sensitive neurons across target classes per layer{' — ' + title if title else ''} (top {top_percent:g}%)"
    )
    notes = (
        "Omega^y_l = top channels of layer l by sensitivity over the targeted PGD set of class y. Total Jaccard "
        "= |∩_y Omega^y_l| / |∪_y Omega^y_l| (TIP Eq 10); average pair Jaccard (ECCV Eq 7) and Levenshtein "
        f"similarity (TIP Eq 9) over all pairs y != y'. Layers excluded: {', '.join(exclude_layers) or 'none'}."
    )
    if len(fc_check):
        notes += (
            f" The most sensitive fc unit equals the target class for {int(fc_check['matches'].sum())} of "
            f"{len(fc_check)} targeted sets (ECCV Sec. 3.3)."
        )
    write_table(table, out_csv, out_md, heading, notes)
    save_figure(layer_similarity_figure(table, heading), figure_png)
    write_json(
        metadata(
            "layer_similarity",
            {"top_percent": top_percent, "exclude_layers": list(exclude_layers), "sensitivity": str(sensitivity_csv)},
            fc_top_unit=fc_check.to_dict(orient="records"),
        ),
        meta_path,
    )
    return table


def layer_similarity_figure(table: pd.DataFrame, title: str = ""):
    """TIP Fig 8: total Jaccard, average pair Jaccard and pair Levenshtein similarity of the per-target
    sensitive neurons per layer. The pair averages keep no per-pair values, so there is no band."""
    plt, sns = plotting()
    long = table.melt(
        id_vars=["layer", "depth"],
        value_vars=["total_jaccard", "avg_pair_jaccard", "avg_pair_levenshtein"],
        var_name="metric",
        value_name="value",
    )
    fig, ax = plt.subplots(figsize=(figure_width(len(table)), 4.2))
    sns.lineplot(data=long, x="depth", y="value", hue="metric", marker="o", errorbar=None, ax=ax)
    layer_ticks(ax, table["depth"], table["layer"], LAYER_LABEL)
    ax.set_ylabel("similarity across target classes (0-1)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{title}\npair values averaged over class pairs; no band (per-pair values not kept)")
    return fig
