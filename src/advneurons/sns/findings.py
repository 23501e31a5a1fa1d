"""The claims of the SNS papers (ECCV 2020 / TIP) decided on this run's analyses, and findings.md.

The analyses themselves live beside this module (importance, similarity, suppression, ratios); the claim
builders (`claims_*`) turn their tables into `report.findings.Claim`s, and `sns_findings` writes them, with
sections other analyses add (`extra_sections`), as findings.md / findings.json.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from advneurons.report.findings import Claim, Section, write_findings
from advneurons.sns.similarity import fc_top_unit_is_target, spearman
from advneurons.sns.suppression import CLEAN, decode_counts
from advneurons.evaluation.paired_stats import (UnitTest, binomial_vs_threshold, decide_units, sign_test,
                                                wilcoxon_test)

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


ALPHA = 0.05

SIGN_UNITS_RULE = ("the {units} have no test of their own (the table keeps one value per {unit}); exact sign test "
                   "over the {n} {units} (scipy binomtest, p 1/2 per {unit}) at alpha {alpha:g}: supported if every "
                   "{unit} goes the claimed way and the test is significant; partly if the test is significant but "
                   "not every {unit} agrees; contradicted if significant against the claim; otherwise within noise")


def _claim(text: str, label: str, evidence: str, source: str, rule: str, extension: bool = False) -> Claim:
    return Claim(text, {"supported": True, "contradicted": False}.get(label), evidence, source, label, rule, extension)


def _units_claim(text: str, units: list[UnitTest], evidence: str, source: str, unit_word: str, test: str,
                 extension: bool = False) -> Claim:
    """A claim that should hold in every unit, each unit with its own `test` (in words), combined by Holm
    (decide_units)."""
    if not units:
        return Claim(text, None, evidence or "no data", source, rule=f"{test}; needs at least one unit",
                     extension=extension)
    verdict = decide_units(units, ALPHA, unit_word)
    return _claim(text, verdict.label, f"{evidence}; {verdict.statistic}" if evidence else verdict.statistic,
                  source, f"{test}; {verdict.rule}", extension)


def _sign_claim(text: str, flags: Sequence[bool], evidence: str, source: str, unit: str, units: str,
                extension: bool = False) -> Claim:
    """A claim over units without a test of their own: k of n, read by the exact sign test (SIGN_UNITS_RULE)."""
    from scipy.stats import binomtest

    n, k = len(flags), int(sum(bool(f) for f in flags))
    rule = SIGN_UNITS_RULE.format(unit=unit, units=units, n=n, alpha=ALPHA)
    if n == 0:
        return Claim(text, None, evidence or "no data", source, rule=rule, extension=extension)
    p_claimed = float(binomtest(k, n, 0.5, alternative="greater").pvalue)
    p_against = float(binomtest(k, n, 0.5, alternative="less").pvalue)
    label = ("contradicted" if p_against < ALPHA else "supported" if p_claimed < ALPHA and k == n
             else "partly" if p_claimed < ALPHA else "within noise")
    statistic = f"{k} of {n} {units} go the claimed way; exact sign test p={p_claimed:.2g} (against p={p_against:.2g})"
    return _claim(text, label, f"{evidence}; {statistic}" if evidence else statistic, source, rule, extension)


def _spearman_unit(name: str, rho: float, p_two_sided: float, claimed_sign: int = 1) -> UnitTest:
    """A unit test from a Spearman correlation and its two-sided p-value: one-sided p in the claimed direction
    (rho > 0 for claimed_sign 1, < 0 for -1) is p/2 when rho has that sign, 1 - p/2 otherwise."""
    if not np.isfinite(rho) or not np.isfinite(p_two_sided):
        return UnitTest(name, 1.0, 1.0, "Spearman undefined (a constant ranking)")
    half = p_two_sided / 2
    p_claimed = half if rho * claimed_sign > 0 else 1 - half
    return UnitTest(name, p_claimed, 1 - p_claimed if rho * claimed_sign != 0 else 1.0,
                    f"Spearman {rho:.3f}, one-sided p={p_claimed:.2g}")


def _trend(x, y, claimed_sign: int = 1) -> tuple[float, float, float]:
    """Kendall's tau of y against x and its one-sided p-values (claimed direction, against it): scipy's
    kendalltau, exact for small samples without ties (the t approximation of Spearman's p calls a perfect
    three-point ranking p=0)."""
    from scipy.stats import kendalltau

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.all(y == y[0]) or np.all(x == x[0]):
        return float("nan"), 1.0, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        greater = kendalltau(x, y, alternative="greater")
        less = kendalltau(x, y, alternative="less")
    p_greater, p_less = float(greater.pvalue), float(less.pvalue)
    return float(greater.statistic), *((p_greater, p_less) if claimed_sign > 0 else (p_less, p_greater))


# ---------------------------------------------------------------------------------- importance (TIP IV-B)
SPEARMAN_TEST = ("per target class, Spearman's rho of sensitivity vs importance over the penultimate channels "
                 "(scipy; its two-sided p halved in the claimed direction, rho > 0)")

def claims_importance(per_class: pd.DataFrame, summary: pd.DataFrame | None = None,
                      extension: bool = False) -> list[Claim]:
    """Claims on sensitive vs important penultimate neurons from `importance_vs_sensitivity` (and its summary)."""
    rho = per_class["spearman"].dropna()
    lev = per_class["levenshtein_similarity"].dropna()
    jac = per_class["jaccard"].dropna()
    chance = {} if summary is None else dict(zip(summary["metric"], summary["chance"]))
    summary_text = (f"{int((rho > 0).sum())} of {len(rho)} classes positive; mean {_fmt(rho.mean())} (range "
                    f"{_fmt(rho.min())}..{_fmt(rho.max())}) vs paper mean 0.428 (0.36..0.53, CIFAR-10 VGG16)")
    text = "Spearman correlation between neuron sensitivity and importance (votes) is positive for every target class"
    if "spearman_p" in per_class:
        units = [_spearman_unit(f"class {r.target}" if hasattr(r, "target") else f"class {i}", r.spearman,
                                r.spearman_p) for i, r in enumerate(per_class.itertuples())]
        claims = [_units_claim(text, units, summary_text, "TIP Sec. IV-B, Eq 6, Fig 3", "classes", SPEARMAN_TEST,
                               extension)]
    else:
        claims = [_sign_claim(text, (rho > 0).tolist(), summary_text, "TIP Sec. IV-B, Eq 6, Fig 3", "class",
                              "classes", extension)]
    if "spearman_mean_phi" in per_class and per_class["spearman_mean_phi"].notna().any():
        phi = per_class["spearman_mean_phi"].dropna()
        units = [_spearman_unit(f"class {r.target}" if hasattr(r, "target") else f"class {i}", r.spearman_mean_phi,
                                r.spearman_mean_phi_p) for i, r in enumerate(per_class.itertuples())]
        claims.append(_units_claim(
            "Spearman correlation between neuron sensitivity and importance (mean phi over the targeted set) is "
            "positive for every target class", units,
            f"{int((phi > 0).sum())} of {len(phi)} classes positive; mean {_fmt(phi.mean())} (range "
            f"{_fmt(phi.min())}..{_fmt(phi.max())})", "TIP Sec. IV-B, Eq 6", "classes", SPEARMAN_TEST, extension))
    text = ("Sensitive and important neurons overlap more than two random selections would "
            "(Levenshtein similarity and Jaccard above chance)")
    evidence = (f"mean Levenshtein similarity {_fmt(lev.mean())} (range {_fmt(lev.min())}..{_fmt(lev.max())}; chance "
                f"{_fmt(chance.get('levenshtein_similarity', np.nan))}; paper mean 0.554, 0.46..0.72); mean Jaccard "
                f"{_fmt(jac.mean())} (chance {_fmt(chance.get('jaccard', np.nan))})")
    source = "TIP Sec. IV-B, Eq 7-8; ECCV Eq 6"
    if len(lev) == 0 or "levenshtein_similarity" not in chance or "jaccard" not in chance:
        claims.append(Claim(text, None, evidence, source, rule="needs per-class values and their chance levels",
                            extension=extension))
    else:
        what = "target classes (each class's value against the chance level)"
        tests = [wilcoxon_test(lev.to_numpy(), chance["levenshtein_similarity"], "a_greater", ALPHA, what),
                 wilcoxon_test(jac.to_numpy(), chance["jaccard"], "a_greater", ALPHA, what)]
        labels = [t.label for t in tests]
        label = ("contradicted" if "contradicted" in labels else "supported" if labels == ["supported"] * 2
                 else "partly" if "supported" in labels else "within noise")
        rule = (f"{tests[0].rule}, for Levenshtein similarity and for Jaccard: supported if both are, contradicted "
                "if either is significantly below chance, partly if one is supported, otherwise within noise")
        claims.append(_claim(text, label, f"{evidence}; Levenshtein: {tests[0].statistic}; Jaccard: "
                             f"{tests[1].statistic}", source, rule, extension))
    return claims


# ------------------------------------------------------------------------------- layer similarity (IV-D)
def _bottom_top(table: pd.DataFrame, column: str) -> tuple[float, float, int]:
    """Mean of `column` over the first and the last third of the layers (by depth), and the third's size."""
    ordered = table.sort_values("depth")[column].dropna().to_numpy()
    third = max(1, len(ordered) // 3)
    return float(ordered[:third].mean()), float(ordered[-third:].mean()), third


def claims_layer_similarity(table: pd.DataFrame, extension: bool = False) -> list[Claim]:
    """Claims on the per-layer similarity of per-target sensitive neurons (`layer_similarity`): decided by the
    one-sided Kendall test of the value against layer depth (higher in bottom layers: negative correlation)."""

    claims = []
    for column, label, source in (
        ("total_jaccard", "total Jaccard index", "TIP Fig 8, Eq 10"),
        ("avg_pair_levenshtein", "average pair Levenshtein similarity", "TIP Fig 8, Eq 9"),
        ("avg_pair_jaccard", "average pair Jaccard index", "ECCV Fig 2b, Eq 7"),
    ):
        text = (f"The {label} of sensitive neurons across target classes is higher in bottom layers than in top "
                "layers")
        rule = (f"Kendall's tau of the value with layer depth over the layers, one-sided test (negative: higher "
                f"in bottom layers) at alpha {ALPHA:g}: supported if p < {ALPHA:g}; contradicted if the opposite "
                f"one-sided p < {ALPHA:g}; otherwise within noise")
        data = table[["depth", column]].dropna() if column in table else table.iloc[:0]
        if len(data) < 3 or data[column].nunique() < 2:
            claims.append(Claim(text, None, "no data" if data.empty else f"{len(data)} layers: too few to test",
                                source, rule=rule, extension=extension))
            continue
        bottom, top, third = _bottom_top(data, column)
        rho, _ = spearman(data["depth"].to_numpy(), data[column].to_numpy())
        tau, p_claimed, p_against = _trend(data["depth"], data[column], claimed_sign=-1)
        verdict = ("supported" if p_claimed < ALPHA else "contradicted" if p_against < ALPHA else "within noise")
        claims.append(_claim(
            text, verdict,
            f"mean over the first {third} layers {_fmt(bottom)} vs the last {third} {_fmt(top)}; Spearman(depth, "
            f"value) {_fmt(rho)}; Kendall tau {_fmt(tau)} over {len(data)} layers, one-sided p={p_claimed:.2g} "
            f"(opposite p={p_against:.2g})", source, rule, extension))
    return claims


def claims_fc_target(fc_check: pd.DataFrame, n_units: int | None = None, extension: bool = False) -> list[Claim]:
    """ECCV Sec. 3.3: the most sensitive unit of the linear layer is the target class of the targeted set.

    Each target class is one unit whose check has no sampling test of its own; the count of hits is tested
    against chance (1 / `n_units`, the linear layer's units; default: the number of target classes)."""
    from scipy.stats import binomtest

    text = "The most sensitive unit of the final linear layer of each targeted set is its target class"
    n = len(fc_check)
    hits = int(fc_check["matches"].sum()) if n else 0
    chance = 1 / max(2, n_units or n or 2)
    rule = (f"exact binomial test of the hits against chance (1 in {round(1 / chance)} units), alpha {ALPHA:g}: "
            "supported if every target class hits and the test is significant; partly if some miss but the hits "
            "are significantly above chance; contradicted if significantly below chance; otherwise within noise")
    if n == 0:
        return [Claim(text, None, "0 of 0 target classes", "ECCV Sec. 3.3", rule=rule, extension=extension)]
    p_above = float(binomtest(hits, n, chance, alternative="greater").pvalue)
    p_below = float(binomtest(hits, n, chance, alternative="less").pvalue)
    label = ("supported" if p_above < ALPHA and hits == n else "partly" if p_above < ALPHA
             else "contradicted" if p_below < ALPHA else "within noise")
    return [_claim(text, label, f"{hits} of {n} target classes; exact binomial test vs chance {chance:.3g}: "
                   f"p={p_above:.2g}", "ECCV Sec. 3.3", rule, extension)]


# ------------------------------------------------------------------------------------- suppression (IV-D)
SUPPRESSION_WHAT = "images (each image's correctness averaged over the selection's repeats)"


def claims_suppression(summary: pd.DataFrame, collapse_beta: float = 0.7, robust_beta: float = 0.95,
                       clean_tolerance: float = 2.0, extension: bool = False) -> list[Claim]:
    """Claims of TIP Fig 9 (Sec. IV-D) from the summary table of `suppression_study` (accuracy_pct per
    selection/beta, n_images and n_repeats per cell, and each cell's per-image results `correct_count_by_image`).

    Comparisons of two selections are decided on the images: each image's correctness is averaged over the
    selection's repeats (the random selections' draws are repeats of the same images, not extra images), then an
    exact sign test over the images (advneurons.evaluation.paired_stats.sign_test). "Collapse" is read as clean
    accuracy at `collapse_beta` below half of the unsuppressed clean accuracy: exact binomial test against that
    threshold. The paper's beta 0.95 claim is "more robustness at similar clean accuracy": it needs the two
    selections' mean clean accuracies within `clean_tolerance` points, and is contradicted when suppressing
    sensitive channels costs more clean accuracy than that.
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

    def per_image(key):
        r = row(*key)
        if r is None or "correct_count_by_image" not in summary:
            return None
        counts = decode_counts(r["correct_count_by_image"])
        return counts / int(r["n_repeats"]) if len(counts) else None

    def compare(text, a_key, b_key, relation, evidence, source, extra=None):
        """A claim comparing cell a_key with cell b_key ((perturbation, selection, beta) each), per image."""
        a, b = per_image(a_key), per_image(b_key)
        word = "above" if relation == "a_greater" else "below"
        if a is None or b is None or len(a) != len(b):
            return Claim(text, None, f"{evidence}; the summary keeps no per-image results on the same images: not "
                         "tested", source, rule=f"exact sign test over {SUPPRESSION_WHAT} (A {word} B)",
                         extension=extension)
        verdict = sign_test(a, b, relation, ALPHA, SUPPRESSION_WHAT)
        label = extra(verdict.label) if extra else verdict.label
        rule = verdict.rule + (f"; the claim's condition (clean accuracies within {clean_tolerance:g} points, read on "
                               "the means) must hold for supported, and sensitive suppression costing more clean "
                               "accuracy than that contradicts it" if extra else "")
        return _claim(text, label, f"{evidence}; {verdict.statistic}", source, rule, extension)

    claims = []
    clean = summary[summary["perturbation"] == CLEAN]
    betas = sorted(b for b in clean["beta"].unique() if b < 1.0)
    base = acc(CLEAN, "sensitive", 1.0)
    s, r = acc(CLEAN, "sensitive", collapse_beta), acc(CLEAN, "random", collapse_beta)
    lower = [acc(CLEAN, "sensitive", b) < acc(CLEAN, "random", b) for b in betas]
    claims.append(compare(
        "Suppressing sensitive channels lowers clean accuracy faster than suppressing as many random channels",
        (CLEAN, "sensitive", collapse_beta), (CLEAN, "random", collapse_beta), "a_less",
        f"clean accuracy at beta={collapse_beta:g}: sensitive {_fmt(s, 1)}% vs random {_fmt(r, 1)}% "
        f"(unsuppressed {_fmt(base, 1)}%); sensitive below random at {sum(lower)} of {len(lower)} betas < 1",
        "TIP Fig 9, ECCV Fig 3a"))
    collapse = per_image((CLEAN, "sensitive", collapse_beta))
    text = (f"Clean accuracy collapses when sensitive channels are scaled by beta≈{collapse_beta:g} "
            "(read as: below half the unsuppressed accuracy)")
    evidence = f"sensitive {_fmt(s, 1)}% vs unsuppressed {_fmt(base, 1)}%; random channels keep {_fmt(r, 1)}%"
    threshold = 0.5 * base / 100 if np.isfinite(base) else np.nan
    if collapse is None or not 0 < threshold < 1:
        claims.append(Claim(text, None, evidence + "; no per-image results or no unsuppressed accuracy: not tested",
                            "TIP Sec. IV-D, Fig 9", rule="exact binomial test against half the unsuppressed accuracy",
                            extension=extension))
    else:
        # the sensitive selection is one selection (one repeat): its images are the binomial trials
        verdict = binomial_vs_threshold(int(round(collapse.sum())), len(collapse), threshold, "below", ALPHA,
                                        "images (sensitive selection)")
        claims.append(_claim(text, verdict.label, f"{evidence}; {verdict.statistic} (half the unsuppressed accuracy, "
                             "taken as fixed)", "TIP Sec. IV-D, Fig 9", verdict.rule, extension))
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
            (name, "sensitive", robust_beta), (name, "random", robust_beta), "a_greater",
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

    `vanilla`/`pat` name the model labels; by default the one label containing "vanilla" / "pat". The table's
    cells are means over images with no per-cell test, so the "every cell / every layer" claims are read by the
    exact sign test over their cells (SIGN_UNITS_RULE); the depth trend has a Kendall test per model, combined
    by Holm.
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
    cells = "(model, layer, strength) cells"
    claims = [
        _sign_claim("ReLU layers amplify: the ratio after each ReLU exceeds that of the conv layer before it",
                    relu_up, f"{sum(relu_up)} of {len(relu_up)} {cells} of the table", "TIP Table II", "cell", cells),
        _sign_claim("Conv layers damp: the ratio of each conv layer is below that of the ReLU before it",
                    conv_down, f"{sum(conv_down)} of {len(conv_down)} cells", "TIP Table II", "cell", cells),
    ]
    labels = table["model"].unique().tolist()
    vanilla = vanilla or _find_label(labels, "vanilla")
    pat = pat or _find_label(labels, "pat")
    if vanilla in labels and pat in labels:
        v = table[table["model"] == vanilla].set_index("layer")[strengths]
        p = table[table["model"] == pat].set_index("layer")[strengths].reindex(v.index)
        lower = (p.to_numpy(float) < v.to_numpy(float)).ravel().tolist()
        claims.append(_sign_claim(f"{pat} has lower sensitivity ratios than {vanilla} in every listed layer and "
                                  "strength", lower, f"{sum(lower)} of {len(lower)} cells", "TIP Table II, Fig 13",
                                  "cell", "(layer, strength) cells"))
    growing = []
    for (_, _), rows in table.groupby(["model", "layer"], sort=False):
        values = rows[strengths].to_numpy(float).ravel()
        if len(values) > 2:
            growing.append(bool(stats.spearmanr(np.arange(len(values)), values).statistic > 0))
    claims.append(_sign_claim(
        "The ratio grows with the perturbation strength in every layer (positive correlation)", growing,
        f"Spearman(strength, ratio) > 0 for {sum(growing)} of {len(growing)} (model, layer) rows",
        "TIP Table II, Fig 14", "row", "(model, layer) rows"))
    if layer_means is not None and not layer_means.empty:
        fam = family or layer_means["family"].iloc[0]
        conv = layer_means[(layer_means["kind"] == "conv") & (layer_means["family"] == fam)]
        column = "ratio_sensitive" if conv["ratio_sensitive"].notna().any() else "ratio_all"
        evidence, units = [], []
        for model_label, rows in conv.groupby("model", sort=False):
            top = rows[rows["level"] == rows["level"].max()].sort_values("position")
            values = top[column].to_numpy(float)
            if len(values) > 2:
                tau, p_claimed, p_against = _trend(np.arange(len(values)), values)
                units.append(UnitTest(str(model_label), p_claimed, p_against,
                                      f"Kendall tau(depth, ratio) {_fmt(tau)}, one-sided p={p_claimed:.2g}"))
                evidence.append(f"{model_label}: first conv {_fmt(values[0])}, last {_fmt(values[-1])}")
        claims.append(_units_claim(
            f"Error amplification: under {fam} at the largest strength the ratio of the "
            f"{'sensitive' if column == 'ratio_sensitive' else ''} neurons grows with depth",
            units, "; ".join(evidence), "TIP Fig 13", "models",
            "per model, Kendall's tau of the ratio with conv depth (scipy, one-sided: grows with depth)"))
    return claims


# -------------------------------------------------------------------------------- PAT sensitivity (V-B)
def claims_pat_sensitivity(summary: pd.DataFrame, vanilla: str | None = None, pat: str | None = None) -> list[Claim]:
    """TIP Fig 10: PAT is less sensitive than vanilla in every layer (from `sensitivity_layer_summary`).

    Each layer is a unit with its own test where the summary has each layer's channel spread (Welch's t-test
    from the means, standard deviations and channel counts, one-sided; the two models' channels are not paired),
    combined by Holm; without it, the exact sign test over the layers."""
    from scipy.stats import ttest_ind_from_stats

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
                rule="needs one vanilla and one PAT model",
            )
        ]
    wide = summary.pivot_table(index="layer", columns="model", values="mean_sensitivity")
    wide = wide.loc[summary.drop_duplicates("layer").sort_values("depth", kind="stable")["layer"]]
    lower = (wide[pat] < wide[vanilla]).tolist()
    ratio = (wide[pat] / wide[vanilla]).replace([np.inf, -np.inf], np.nan)
    top_col = [c for c in summary.columns if c.startswith("mean_top")]
    text = f"{pat} has lower mean neuron sensitivity than {vanilla} in every layer"
    evidence = (f"{sum(lower)} of {len(lower)} layers lower; {pat}/{vanilla} mean ratio {_fmt(ratio.mean())} "
                f"(range {_fmt(ratio.min())}..{_fmt(ratio.max())})")
    rows = summary.set_index(["layer", "model"])
    if {"std_sensitivity", "n_channels"} <= set(summary.columns):
        units = []
        for layer in wide.index:
            p_row, v_row = rows.loc[(layer, pat)], rows.loc[(layer, vanilla)]
            args = (p_row["mean_sensitivity"], p_row["std_sensitivity"], int(p_row["n_channels"]),
                    v_row["mean_sensitivity"], v_row["std_sensitivity"], int(v_row["n_channels"]))
            less = ttest_ind_from_stats(*args, equal_var=False, alternative="less")
            greater = ttest_ind_from_stats(*args, equal_var=False, alternative="greater")
            units.append(UnitTest(str(layer), float(less.pvalue), float(greater.pvalue),
                                  f"{args[0]:.4g} vs {args[3]:.4g}, Welch t={float(less.statistic):.2f}"))
        claims = [_units_claim(text, units, evidence, "TIP Fig 10", "layers",
                               f"per layer, Welch's t-test (scipy, from the layer's channel means, standard "
                               f"deviations and counts; the two models' channels are not paired), one-sided "
                               f"({pat} lower)")]
    else:
        claims = [_sign_claim(text, lower, evidence, "TIP Fig 10", "layer", "layers")]
    if top_col and "n_channels" in summary:
        # ECCV Sec. 4.1: adversarial training lowers the sensitivity of the most sensitive neurons most. Per layer,
        # the vanilla-PAT gap of the top-k% neurons (each model's own top set) against that of the other channels.
        percent = float(top_col[0].removeprefix("mean_top").removesuffix("pct"))
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
        claims.append(_sign_claim(
            f"Adversarial training narrows the sensitivity of the top-{percent:g}% sensitive neurons more than "
            f"that of the other {100 - percent:g}% ({vanilla} minus {pat} gap, per layer)", wider,
            f"top-{percent:g}% gap larger in {sum(wider)} of {len(wider)} layers", "ECCV Sec. 4.1", "layer",
            "layers"))
    return claims


# ------------------------------------------------------------------------------------------ the step
def _is_extension(label: str) -> bool:
    """The papers make their importance, similarity and suppression claims on vanilla models; other models
    (PAT, defenses, external models) extend them."""
    return "vanilla" not in label


def _extension(label: str) -> str:
    return "" if not _is_extension(label) else " (extension: the papers test vanilla models)"


def _extension_note(label: str) -> str:
    if not _is_extension(label):
        return ""
    return "The papers state these findings for vanilla models; this section extends them (counted apart)."


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
                    claims_importance(pd.read_csv(path), summary, _is_extension(label)), note=_extension_note(label))
        )
    for label, path in (layer_similarity or {}).items():
        claims = claims_layer_similarity(pd.read_csv(path), _is_extension(label))
        if targeted_sensitivity and label in targeted_sensitivity:
            targeted = pd.read_csv(targeted_sensitivity[label])
            n_units = targeted.loc[targeted["layer"] == "fc", "channel"].nunique() or None
            claims += claims_fc_target(fc_top_unit_is_target(targeted), n_units, _is_extension(label))
        sections.append(Section(f"Sensitive neurons across target classes — {label}{_extension(label)}", claims,
                                note=_extension_note(label)))
    for label, path in (suppression or {}).items():
        sections.append(Section(f"Suppressing sensitive neurons — {label}{_extension(label)}",
                                claims_suppression(pd.read_csv(path), extension=_is_extension(label)),
                                note=_extension_note(label)))
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
