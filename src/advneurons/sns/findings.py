"""The claims of the SNS papers (ECCV 2020 / TIP) decided on this run's analyses, and findings.md.

The analyses themselves live beside this module (importance, similarity, suppression, ratios); the claim
builders (`claims_*`) turn their tables into `report.findings.Claim`s, and `sns_findings` writes them, with
sections other analyses add (`extra_sections`), as findings.md / findings.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from advneurons.report.findings import Claim, Section, write_findings
from advneurons.sns.similarity import fc_top_unit_is_target
from advneurons.sns.suppression import CLEAN
from advneurons.evaluation.paired_stats import decide_by_intervals, wilson_interval

__all__ = [
    "sns_findings",
    "claims_importance",
    "claims_layer_similarity",
    "claims_fc_target",
    "claims_suppression",
    "claims_ratios",
    "claims_pat_sensitivity",
]


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _all(flags: Sequence[bool]) -> bool | None:
    return None if len(flags) == 0 else bool(all(flags))


# ---------------------------------------------------------------------------------- importance (TIP IV-B)
def claims_importance(per_class: pd.DataFrame, summary: pd.DataFrame | None = None) -> list[Claim]:
    """Claims on sensitive vs important penultimate neurons from `importance_vs_sensitivity` (and its summary)."""
    rho = per_class["spearman"].dropna()
    lev = per_class["levenshtein_similarity"].dropna()
    jac = per_class["jaccard"].dropna()
    chance = {} if summary is None else dict(zip(summary["metric"], summary["chance"]))
    claims = [
        Claim(
            "Spearman correlation between neuron sensitivity and importance (votes) is positive for every target class",
            _all((rho > 0).tolist()),
            f"{int((rho > 0).sum())} of {len(rho)} classes positive"
            + (f", {int((per_class['spearman_p'] < 0.05).sum())} significant at p<0.05" if "spearman_p" in per_class
               else "")
            + f"; mean {_fmt(rho.mean())} (range {_fmt(rho.min())}..{_fmt(rho.max())}) vs paper mean 0.428 "
            "(0.36..0.53, CIFAR-10 VGG16)",
            "TIP Sec. IV-B, Eq 6, Fig 3",
        ),
    ]
    if "spearman_mean_phi" in per_class and per_class["spearman_mean_phi"].notna().any():
        phi = per_class["spearman_mean_phi"].dropna()
        significant = int((per_class["spearman_mean_phi_p"] < 0.05).sum())
        claims.append(Claim(
            "Spearman correlation between neuron sensitivity and importance (mean phi over the targeted set) is "
            "positive for every target class",
            _all((phi > 0).tolist()),
            f"{int((phi > 0).sum())} of {len(phi)} classes positive, {significant} significant at p<0.05; mean "
            f"{_fmt(phi.mean())} (range {_fmt(phi.min())}..{_fmt(phi.max())})",
            "TIP Sec. IV-B, Eq 6",
        ))
    claims.append(
        Claim(
            "Sensitive and important neurons overlap more than two random selections would "
            "(Levenshtein similarity and Jaccard above chance)",
            (
                None
                if len(lev) == 0 or "levenshtein_similarity" not in chance
                else bool(lev.mean() > chance["levenshtein_similarity"] and jac.mean() > chance["jaccard"])
            ),
            f"mean Levenshtein similarity {_fmt(lev.mean())} (range {_fmt(lev.min())}..{_fmt(lev.max())}; chance "
            f"{_fmt(chance.get('levenshtein_similarity', np.nan))}; paper mean 0.554, 0.46..0.72); mean Jaccard "
            f"{_fmt(jac.mean())} (chance {_fmt(chance.get('jaccard', np.nan))})",
            "TIP Sec. IV-B, Eq 7-8; ECCV Eq 6",
        )
    )
    return claims


# ------------------------------------------------------------------------------- layer similarity (IV-D)
def _bottom_top(table: pd.DataFrame, column: str) -> tuple[float, float, int]:
    """Mean of `column` over the first and the last third of the layers (by depth), and the third's size."""
    ordered = table.sort_values("depth")[column].dropna().to_numpy()
    third = max(1, len(ordered) // 3)
    return float(ordered[:third].mean()), float(ordered[-third:].mean()), third


def claims_layer_similarity(table: pd.DataFrame) -> list[Claim]:
    """Claims on the per-layer similarity of per-target sensitive neurons (`layer_similarity`)."""
    from scipy import stats  # here: importing this module must not load scipy

    claims = []
    for column, label, source in (
        ("total_jaccard", "total Jaccard index", "TIP Fig 8, Eq 10"),
        ("avg_pair_levenshtein", "average pair Levenshtein similarity", "TIP Fig 8, Eq 9"),
        ("avg_pair_jaccard", "average pair Jaccard index", "ECCV Fig 2b, Eq 7"),
    ):
        if table.empty or table[column].dropna().empty:
            claims.append(
                Claim(
                    f"The {label} of sensitive neurons across target classes is higher in bottom "
                    "layers than in top layers",
                    None,
                    "no data",
                    source,
                )
            )
            continue
        bottom, top, third = _bottom_top(table, column)
        rho, _ = stats.spearmanr(table["depth"], table[column]) if len(table) > 2 else (np.nan, None)
        claims.append(
            Claim(
                f"The {label} of sensitive neurons across target classes is higher in bottom layers than in top layers",
                bool(bottom > top),
                f"mean over the first {third} layers {_fmt(bottom)} vs the last {third} {_fmt(top)}; "
                f"Spearman(depth, value) {_fmt(float(rho))} over {len(table)} layers",
                source,
            )
        )
    return claims


def claims_fc_target(fc_check: pd.DataFrame) -> list[Claim]:
    """ECCV Sec. 3.3: the most sensitive unit of the linear layer is the target class of the targeted set."""
    n = len(fc_check)
    hits = int(fc_check["matches"].sum()) if n else 0
    return [
        Claim(
            "The most sensitive unit of the final linear layer of each targeted set is its target class",
            None if n == 0 else hits == n,
            f"{hits} of {n} target classes",
            "ECCV Sec. 3.3",
        )
    ]


# ------------------------------------------------------------------------------------- suppression (IV-D)
def claims_suppression(summary: pd.DataFrame, collapse_beta: float = 0.7, robust_beta: float = 0.95,
                       clean_tolerance: float = 2.0) -> list[Claim]:
    """Claims of TIP Fig 9 (Sec. IV-D) from the summary table of `suppression_study` (accuracy_pct per
    selection/beta, n_images per cell; random selections pooled over their repeats).

    Accuracies are compared through their Wilson 95% intervals (advneurons.evaluation.paired_stats.decide_by_intervals):
    the study keeps no per-image results, so the conservative non-overlap test decides. "Collapse" is read as
    clean accuracy at `collapse_beta` below half of the unsuppressed clean accuracy. The paper's beta 0.95 claim
    is "more robustness at similar clean accuracy": it needs the two selections' clean accuracies within
    `clean_tolerance` points, and is contradicted when suppressing sensitive channels costs more clean accuracy.
    """

    def row(perturbation, selection, beta):
        rows = summary[
            (summary["perturbation"] == perturbation)
            & (summary["selection"] == selection)
            & np.isclose(summary["beta"], beta)
        ]
        return rows.iloc[0] if len(rows) else None

    def acc(perturbation, selection, beta):
        r = row(perturbation, selection, beta)
        return float(r["accuracy_pct"]) if r is not None else np.nan

    def compare(text, a_key, b_key, relation, evidence, source, extra=None):
        """A claim comparing cell a_key with cell b_key ((perturbation, selection, beta) each)."""
        a, b = row(*a_key), row(*b_key)
        if a is None or b is None or "n_images" not in summary:
            return Claim(text, None, evidence, source)
        a_n = int(a["n_images"]) * int(a["n_repeats"])
        b_n = int(b["n_images"]) * int(b["n_repeats"])
        verdict = decide_by_intervals(a["accuracy_pct"] / 100, a_n, b["accuracy_pct"] / 100, b_n, relation)
        label = extra(verdict.label) if extra else verdict.label
        supported = {"supported": True, "contradicted": False}.get(label)
        return Claim(text, supported, f"{evidence}; {verdict.statistic} (random: pooled over its repeats)", source,
                     label)

    claims = []
    clean = summary[summary["perturbation"] == CLEAN]
    betas = sorted(b for b in clean["beta"].unique() if b < 1.0)
    base = acc(CLEAN, "sensitive", 1.0)
    s, r = acc(CLEAN, "sensitive", collapse_beta), acc(CLEAN, "random", collapse_beta)
    lower = [acc(CLEAN, "sensitive", b) < acc(CLEAN, "random", b) for b in betas]
    claims.append(compare(
        "Suppressing sensitive channels lowers clean accuracy faster than suppressing as many random channels",
        (CLEAN, "sensitive", collapse_beta), (CLEAN, "random", collapse_beta), "b_better",
        f"clean accuracy at beta={collapse_beta:g}: sensitive {_fmt(s, 1)}% vs random {_fmt(r, 1)}% "
        f"(unsuppressed {_fmt(base, 1)}%); sensitive below random at {sum(lower)} of {len(lower)} betas < 1",
        "TIP Fig 9, ECCV Fig 3a"))
    collapse = row(CLEAN, "sensitive", collapse_beta)
    text = (f"Clean accuracy collapses when sensitive channels are scaled by beta≈{collapse_beta:g} "
            "(read as: below half the unsuppressed accuracy)")
    evidence = f"sensitive {_fmt(s, 1)}% vs unsuppressed {_fmt(base, 1)}%; random channels keep {_fmt(r, 1)}%"
    if collapse is None or not np.isfinite(base) or "n_images" not in summary:
        claims.append(Claim(text, None, evidence, "TIP Sec. IV-D, Fig 9"))
    else:
        n = int(collapse["n_images"])
        low, high = wilson_interval(int(round(s / 100 * n)), n)
        label = ("supported" if 100 * high < 0.5 * base else "contradicted" if 100 * low > 0.5 * base
                 else "within noise")
        claims.append(Claim(text, {"supported": True, "contradicted": False}.get(label),
                            f"{evidence}; Wilson 95% interval [{100 * low:.1f}, {100 * high:.1f}]% of {n} vs half "
                            f"{0.5 * base:.1f}%", "TIP Sec. IV-D, Fig 9", label))
    attacks = [p for p in summary["perturbation"].unique() if p != CLEAN]
    cs, cr = acc(CLEAN, "sensitive", robust_beta), acc(CLEAN, "random", robust_beta)
    similar_clean = bool(np.isfinite(cs) and np.isfinite(cr) and abs(cs - cr) <= clean_tolerance)
    costs_clean = bool(np.isfinite(cs) and np.isfinite(cr) and cr - cs > clean_tolerance)

    def with_clean_condition(label):
        if costs_clean:  # the condition of the claim fails: sensitive suppression costs clean accuracy
            return "contradicted"
        return label if similar_clean or label != "supported" else "within noise"

    for name in attacks:
        a_s, a_r = acc(name, "sensitive", robust_beta), acc(name, "random", robust_beta)
        claims.append(compare(
            f"At beta={robust_beta:g}, suppressing sensitive channels gives more robustness to {name} than "
            f"suppressing random ones at similar clean accuracy (within {clean_tolerance:g} points)",
            (name, "sensitive", robust_beta), (name, "random", robust_beta), "a_better",
            f"{name} accuracy: sensitive {_fmt(a_s, 1)}% vs random {_fmt(a_r, 1)}% "
            f"(clean: {_fmt(cs, 1)}% vs {_fmt(cr, 1)}%, {'similar' if similar_clean else 'not similar'})",
            "TIP Sec. IV-D, Fig 9", with_clean_condition))
    return claims


# ------------------------------------------------------------------------------------------ ratios (V-B)
def _find_label(labels: Sequence[str], word: str) -> str | None:
    hits = [label for label in labels if word in str(label).lower()]
    return hits[0] if len(hits) == 1 else None


def claims_ratios(
    table: pd.DataFrame,
    layer_means: pd.DataFrame | None = None,
    family: str | None = None,
    vanilla: str | None = None,
    pat: str | None = None,
) -> list[Claim]:
    """Claims of TIP Table II / Fig 13-14 from `ratio_table` output (and `ratio_report`'s layer means).

    `vanilla`/`pat` name the model labels; by default the one label containing "vanilla" / "pat".
    """
    from scipy import stats

    strengths = [c for c in table.columns if c not in ("model", "layer", "kind")]
    relu_up, conv_down = [], []
    for _, rows in table.groupby("model", sort=False):
        kinds = rows["kind"].tolist()
        values = rows[strengths].to_numpy(dtype=float)
        for i in range(1, len(kinds)):
            if kinds[i] == "relu" and kinds[i - 1] == "conv":
                relu_up.extend((values[i] > values[i - 1]).tolist())
            elif kinds[i] == "conv" and kinds[i - 1] == "relu":
                conv_down.extend((values[i] < values[i - 1]).tolist())
    claims = [
        Claim(
            "ReLU layers amplify: the ratio after each ReLU exceeds that of the conv layer before it",
            _all(relu_up),
            f"{sum(relu_up)} of {len(relu_up)} (model, layer, strength) cells of the table",
            "TIP Table II",
        ),
        Claim(
            "Conv layers damp: the ratio of each conv layer is below that of the ReLU before it",
            _all(conv_down),
            f"{sum(conv_down)} of {len(conv_down)} cells",
            "TIP Table II",
        ),
    ]
    labels = table["model"].unique().tolist()
    vanilla = vanilla or _find_label(labels, "vanilla")
    pat = pat or _find_label(labels, "pat")
    if vanilla in labels and pat in labels:
        v = table[table["model"] == vanilla].set_index("layer")[strengths]
        p = table[table["model"] == pat].set_index("layer")[strengths].reindex(v.index)
        lower = (p.to_numpy(float) < v.to_numpy(float)).ravel().tolist()
        claims.append(
            Claim(
                f"{pat} has lower sensitivity ratios than {vanilla} in every listed layer and strength",
                _all(lower),
                f"{sum(lower)} of {len(lower)} cells",
                "TIP Table II, Fig 13",
            )
        )
    growing = []
    for (_, _), rows in table.groupby(["model", "layer"], sort=False):
        values = rows[strengths].to_numpy(float).ravel()
        if len(values) > 2:
            growing.append(bool(stats.spearmanr(np.arange(len(values)), values).statistic > 0))
    claims.append(
        Claim(
            "The ratio grows with the perturbation strength in every layer (positive correlation)",
            _all(growing),
            f"Spearman(strength, ratio) > 0 for {sum(growing)} of {len(growing)} (model, layer) rows",
            "TIP Table II, Fig 14",
        )
    )
    if layer_means is not None and not layer_means.empty:
        fam = family or layer_means["family"].iloc[0]
        conv = layer_means[(layer_means["kind"] == "conv") & (layer_means["family"] == fam)]
        column = "ratio_sensitive" if conv["ratio_sensitive"].notna().any() else "ratio_all"
        evidence, flags = [], []
        for model_label, rows in conv.groupby("model", sort=False):
            top = rows[rows["level"] == rows["level"].max()].sort_values("position")
            values = top[column].to_numpy(float)
            if len(values) > 2:
                rho = float(stats.spearmanr(np.arange(len(values)), values).statistic)
                flags.append(rho > 0)
                evidence.append(
                    f"{model_label}: Spearman(depth, ratio) {_fmt(rho)}, first conv {_fmt(values[0])}, "
                    f"last {_fmt(values[-1])}"
                )
        claims.append(
            Claim(
                f"Error amplification: under {fam} at the largest strength the ratio of the "
                f"{'sensitive' if column == 'ratio_sensitive' else ''} neurons grows with depth",
                _all(flags),
                "; ".join(evidence) or "no data",
                "TIP Fig 13",
            )
        )
    return claims


# -------------------------------------------------------------------------------- PAT sensitivity (V-B)
def claims_pat_sensitivity(summary: pd.DataFrame, vanilla: str | None = None, pat: str | None = None) -> list[Claim]:
    """TIP Fig 10: PAT is less sensitive than vanilla in every layer (from `sensitivity_layer_summary`)."""
    labels = summary["model"].unique().tolist()
    vanilla = vanilla or _find_label(labels, "vanilla")
    pat = pat or _find_label(labels, "pat")
    if vanilla not in labels or pat not in labels:
        return [
            Claim(
                "PAT has lower mean neuron sensitivity than vanilla in every layer",
                None,
                f"need one vanilla and one PAT model, got {labels}",
                "TIP Fig 10",
            )
        ]
    wide = summary.pivot_table(index="layer", columns="model", values="mean_sensitivity")
    lower = (wide[pat] < wide[vanilla]).tolist()
    ratio = (wide[pat] / wide[vanilla]).replace([np.inf, -np.inf], np.nan)
    top_col = [c for c in summary.columns if c.startswith("mean_top")]
    claims = [
        Claim(
            f"{pat} has lower mean neuron sensitivity than {vanilla} in every layer",
            _all(lower),
            f"{sum(lower)} of {len(lower)} layers; {pat}/{vanilla} mean ratio {_fmt(ratio.mean())} "
            f"(range {_fmt(ratio.min())}..{_fmt(ratio.max())})",
            "TIP Fig 10",
        )
    ]
    if top_col and "n_channels" in summary:
        # ECCV Sec. 4.1: adversarial training lowers the sensitivity of the most sensitive neurons most. Per layer,
        # the vanilla-PAT gap of the top-k% neurons (each model's own top set) against that of the other channels.
        percent = float(top_col[0].removeprefix("mean_top").removesuffix("pct"))
        rows = summary.set_index(["layer", "model"])
        wider = []
        for layer in wide.index:
            n = int(rows.loc[(layer, vanilla), "n_channels"])
            k = max(1, int(np.ceil(n * percent / 100.0)))
            if n - k < 1:
                continue

            def rest(model):
                r = rows.loc[(layer, model)]
                return (r["mean_sensitivity"] * n - r[top_col[0]] * k) / (n - k)

            top_gap = rows.loc[(layer, vanilla), top_col[0]] - rows.loc[(layer, pat), top_col[0]]
            wider.append(bool(top_gap > rest(vanilla) - rest(pat)))
        claims.append(
            Claim(
                f"Adversarial training narrows the sensitivity of the top-{percent:g}% sensitive neurons more than "
                f"that of the other {100 - percent:g}% ({vanilla} minus {pat} gap, per layer)",
                _all(wider),
                f"top-{percent:g}% gap larger in {sum(wider)} of {len(wider)} layers",
                "ECCV Sec. 4.1",
            )
        )
    return claims


# ------------------------------------------------------------------------------------------ the step
def _extension(label: str) -> str:
    """The papers make their importance and similarity claims on vanilla models; other models extend them."""
    return "" if "vanilla" in label else " (extension: the papers test vanilla models)"


def _extension_note(label: str) -> str:
    return "" if "vanilla" in label else "The papers state these findings for vanilla models; this row extends them."


def sns_findings(
    out_md: Path,
    out_json: Path | None = None,
    importance: dict[str, Path] | None = None,
    importance_summaries: dict[str, Path] | None = None,
    layer_similarity: dict[str, Path] | None = None,
    targeted_sensitivity: dict[str, Path] | None = None,
    suppression: dict[str, Path] | None = None,
    ratio_tables: dict[str, Path] | None = None,
    ratio_layer_means: dict[str, Path] | None = None,
    sensitivity_summaries: dict[str, Path] | None = None,
    ratio_family: str | None = None,
    extra_sections: Sequence[Path] = (),
    title: str = "Findings",
    preamble: str = "",
) -> str:
    """Workflow step: write findings.md (and optionally the sections as JSON) from the analyses' tables.

    Every argument maps a label (e.g. "vgg16-vanilla", or "vgg16" for the cross-model ratio tables) to a file:
    importance -> per-class CSV and importance_summaries -> summary CSV of `importance_report`;
    layer_similarity -> CSV of `layer_similarity`; targeted_sensitivity -> sensitivity CSV of
    `targeted_neurons` (final-layer check); suppression -> summary CSV of `suppression_study`;
    ratio_tables / ratio_layer_means -> Table II CSV / layer means CSV of `ratio_report`;
    sensitivity_summaries -> summary CSV of `sensitivity_curves`. Missing arguments skip their sections.
    `ratio_family`: the perturbation family of the error-amplification claim (default: the family whose name
    contains "linf", else "pgd").
    `extra_sections`: JSON files of other analyses' sections (`findings.write_sections_json`), appended.
    """
    sections: list[Section] = []
    for label, path in (sensitivity_summaries or {}).items():
        sections.append(
            Section(f"Neuron sensitivity, vanilla vs PAT — {label}", claims_pat_sensitivity(pd.read_csv(path)))
        )
    for label, path in (importance or {}).items():
        summary_path = (importance_summaries or {}).get(label)
        summary = pd.read_csv(summary_path) if summary_path else None
        sections.append(
            Section(f"Sensitive vs important neurons — {label}{_extension(label)}",
                    claims_importance(pd.read_csv(path), summary), note=_extension_note(label))
        )
    for label, path in (layer_similarity or {}).items():
        claims = claims_layer_similarity(pd.read_csv(path))
        if targeted_sensitivity and label in targeted_sensitivity:
            claims += claims_fc_target(fc_top_unit_is_target(pd.read_csv(targeted_sensitivity[label])))
        sections.append(Section(f"Sensitive neurons across target classes — {label}{_extension(label)}", claims,
                                note=_extension_note(label)))
    for label, path in (suppression or {}).items():
        sections.append(Section(f"Suppressing sensitive neurons — {label}", claims_suppression(pd.read_csv(path))))
    for label, path in (ratio_tables or {}).items():
        means_path = (ratio_layer_means or {}).get(label)
        means = pd.read_csv(means_path) if means_path else None
        family = ratio_family
        if family is None and means is not None:
            families = [str(f) for f in means["family"].unique()]
            family = next((f for f in families if "linf" in f.lower()), None)
            family = family or next((f for f in families if "pgd" in f.lower()), None)
        sections.append(Section(f"Sensitivity ratios — {label}", claims_ratios(pd.read_csv(path), means, family)))
    return write_findings(sections, out_md, out_json, extra_sections, title, preamble)
