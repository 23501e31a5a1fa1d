"""Final comparison of models and defenses: the robustness table of every model x the attack suite (TIP
Tables III/IV shape), and per-layer neuron sensitivity of the models of one architecture (TIP Fig 17).

Models trained several times as seeded repeats of one defense (e.g. SNS-rand, 3 random channel sets)
share a ``group``; the table reports each repeat and a "mean ± std" row per group.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from advneurons.report.figures import LAYER_LABEL, figure_width, layer_ticks, plotting, save_figure
from advneurons.report.markdown import markdown_table, write_markdown
from advneurons.evaluation.robustness import (CELL_NOTE, WORST_CASE, WORST_CASE_NOTE, accuracy_table,
                                              attack_report, markdown_cells, read_lineage, read_record_images,
                                              read_records, table_iii_columns)
from advneurons.models.layer_names import SNS_LAYERS
from advneurons.runtime import atomic_path
from advneurons.evaluation.paired_stats import (UnitTest, decide, decide_units, mcnemar_rule, mcnemar_unit,
                                                sign_test, wilcoxon_test)
from advneurons.evaluation.robustness import CLEAN, decode_correct
from advneurons.report.findings import MASKING, Claim, Section, write_sections_json


def _group_rows(table: pd.DataFrame, groups: dict[str, str], labels: list[str]) -> pd.DataFrame:
    """Append mean and std rows for every group with more than one model."""
    rows = []
    members: dict[str, list[str]] = {}
    for model in table.model:
        members.setdefault(groups.get(model, model), []).append(model)
    for group, models in members.items():
        if len(models) < 2:
            continue
        part = table[table.model.isin(models)]
        mean = {"model": f"{group} (mean of {len(models)})", **{c: round(part[c].mean(), 2) for c in labels}}
        std = {"model": f"{group} (std)", **{c: round(part[c].std(ddof=1), 2) for c in labels}}
        rows += [mean, std]
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True) if rows else table


def final_robustness_table(record_csvs: list[Path], columns: dict[str, str], dataset: str, models: dict[str, dict],
                           out_csv: Path, out_md: Path, out_tex: Path, settings_csv: Path) -> pd.DataFrame:
    """Workflow step: accuracy (%) of every model under every attack of the suite, one block per architecture.

    ``models`` maps a model label (the ``model`` column of the records) to {arch, training, method,
    group[, not_run]}; rows follow its order; ``not_run`` lists the column labels a model is deliberately not
    evaluated under (empty cells, "—" in Markdown). Writes CSV (arch, model, training, method, then the columns), Markdown,
    LaTeX and a settings CSV (attack and settings behind every cell).
    """
    paths = [Path(p) for p in record_csvs]
    records = read_records(paths)
    unknown = sorted(set(records.model) - set(models))
    if unknown:
        raise ValueError(f"records of models not described in `models`: {unknown}")
    cols = table_iii_columns(records, columns)
    not_run = {(name, label) for name, m in models.items() for label in m.get("not_run", [])}
    table, settings = accuracy_table(records, cols, not_run, images=read_record_images(paths),
                                     lineage=read_lineage(paths))
    labels = [label for label in table.columns if label != "model"]
    blocks = []
    for arch in dict.fromkeys(m["arch"] for m in models.values()):
        order = [name for name, m in models.items() if m["arch"] == arch and name in set(table.model)]
        part = table.set_index("model").loc[order].reset_index()
        part = _group_rows(part, {n: models[n].get("group", n) for n in order}, labels)
        part.insert(0, "arch", arch)
        part.insert(2, "training", [models.get(n, {}).get("training", "") for n in part.model])
        part.insert(3, "method", [models.get(n, {}).get("method", "") for n in part.model])
        blocks.append(part)
    final = pd.concat(blocks, ignore_index=True)
    n = sorted(set(settings.loc[settings.column != WORST_CASE, "n_images"]))
    notes = (f"Accuracy (%) on the {dataset} test split; images per cell: {', '.join(map(str, n))} "
             f"(slow attacks on seeded subsets); eps in 1/255 units. Settings and lineage of every cell: "
             f"{Path(settings_csv).name}.")
    notes += " " + CELL_NOTE + " Group mean and std rows have no interval."
    if WORST_CASE in labels:
        notes += " " + WORST_CASE_NOTE
    adaptive = sorted(set(settings.loc[settings.description.str.contains("EOT", na=False), "model"]))
    if adaptive:
        notes += (f" Randomised defenses ({', '.join(adaptive)}) are attacked adaptively: the attacks see their "
                  "expected logits over the noise (EOT).")
    if not_run:
        notes += " —: not evaluated under that attack (configuration)."
    with atomic_path(out_csv) as tmp:
        final.to_csv(tmp, index=False)
    # intervals, n in the headers, partial-suite and warned cells marked (robustness.markdown_cells)
    marked, marks = markdown_cells(final, settings)
    body = "\n\n".join(
        f"## {arch}\n\n" + markdown_table(block.drop(columns="arch"), ".2f", missing="—")
        for arch, block in marked.groupby("arch", sort=False)
    )
    write_markdown(out_md, f"# Final robustness: models and defenses x attack suite\n\n{notes}\n\n{body}\n"
                   + (f"\n{marks}\n" if marks else ""))
    with atomic_path(out_tex) as tmp:
        tmp.write_text(_latex(final, labels, notes))
    with atomic_path(settings_csv) as tmp:
        settings.to_csv(tmp, index=False)
    return final


def _latex(final: pd.DataFrame, labels: list[str], notes: str) -> str:
    def esc(text) -> str:
        return str(text).replace("&", r"\&").replace("%", r"\%").replace("_", r"\_").replace("±", r"$\pm$")

    lines = [f"% {notes}", r"\begin{tabular}{ll" + "r" * len(labels) + "}", r"\toprule",
             " & ".join(["Arch", "Model", *map(esc, labels)]) + r" \\", r"\midrule"]
    for i, (arch, block) in enumerate(final.groupby("arch", sort=False)):
        if i:
            lines.append(r"\midrule")
        for _, row in block.iterrows():
            values = [row[c] for c in labels]
            cells = ["" if pd.isna(v) else f"{v:.2f}" for v in values]
            lines.append(" & ".join([esc(arch), esc(row["model"]), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def sensitivity_by_training(sensitivity_csvs: dict[str, Path], arch: str, out_csv: Path, out_png: Path) -> pd.DataFrame:
    """Workflow step (TIP Fig 17): neuron sensitivity of each conv channel for every model of one architecture
    (training label -> its sensitivity CSV), as a table (one row per training, layer and channel: the findings
    test the fine-tuned layers over their channels) and a line figure of the per-layer means."""
    frames = []
    for training, path in sensitivity_csvs.items():
        table = pd.read_csv(path)
        missing = {"layer", "depth", "channel", "sensitivity"} - set(table.columns)
        if missing:
            raise ValueError(f"{path} is not a sensitivity table: missing {sorted(missing)}")
        per_channel = table[["depth", "layer", "channel", "sensitivity"]].sort_values(["depth", "channel"],
                                                                                     kind="stable")
        per_channel.insert(0, "training", training)
        frames.append(per_channel)
    summary = pd.concat(frames, ignore_index=True)
    with atomic_path(out_csv) as tmp:
        summary.to_csv(tmp, index=False)
    save_figure(sensitivity_by_training_figure(summary, arch), out_png)
    return summary


def sensitivity_by_training_figure(summary: pd.DataFrame, arch: str):
    """Mean channel sensitivity per conv layer (log scale), one line per training. The per-channel values are
    already means over image pairs (the tables keep no per-pair values), so there is no band."""
    plt, sns = plotting()
    fig, ax = plt.subplots(figsize=(figure_width(summary.layer.nunique()), 4.2))
    # one point per training and layer: the mean over the layer's channels (rows may be per channel)
    means = summary.groupby(["training", "depth", "layer"], sort=False)["sensitivity"].mean().reset_index()
    sns.lineplot(data=means, x="depth", y="sensitivity", hue="training", marker="o", errorbar=None, ax=ax)
    layers = summary.drop_duplicates("depth").sort_values("depth")
    layer_ticks(ax, layers.depth, layers.layer, f"conv {LAYER_LABEL}")
    ax.set_ylabel("mean neuron sensitivity (TIP Eq 1, log scale)")
    ax.set_yscale("log")
    ax.set_title(f"{arch}: neuron sensitivity per layer by training\n"
                 "mean over channels and image pairs; no band (per-pair values not kept)")
    return fig


# ------------------------------------------------------------------------------------------ claims
# Defenses built on a trained model: method -> (display name, suffix of their training name).
DEFENDED_METHODS = {"meansparse": ("MeanSparse", "_meansparse"), "ig_defense": ("IG-Defense", "_igdefense")}


def _row(final: pd.DataFrame, arch: str, training: str) -> pd.Series | None:
    rows = final[(final.arch == arch) & (final.training == training)]
    return rows.iloc[0] if len(rows) else None


class PerImage:
    """Per-image results behind the cells of the final table: (model label, column label) -> bool vector.

    The final table's settings file names the attack of every cell; the evaluate_attack records hold the
    per-image results of that attack (robustness.RECORD_COLUMNS, correct_by_image)."""

    def __init__(self, records: pd.DataFrame, settings: pd.DataFrame):
        by_attack = {(r.model, r.attack): decode_correct(r.correct_by_image) for r in records.itertuples()}
        reports = {(r.model, r.attack): attack_report(getattr(r, "attack_log", "")) for r in records.itertuples()}
        self.cells, self.warnings = {}, {}
        for r in settings.itertuples():
            vector = by_attack.get((r.model, r.attack))
            if vector is not None and len(vector):
                self.cells[(r.model, r.column)] = vector
            warned = reports.get((r.model, r.attack), {}).get("warnings", [])
            if warned:
                self.warnings[(r.model, r.column)] = warned
        for (model, attack), vector in by_attack.items():
            if attack == CLEAN and len(vector):
                self.cells.setdefault((model, "Clean"), vector)

    def get(self, model: str, column: str):
        return self.cells.get((model, column))

    def shared_columns(self, models: list[str], columns: list[str]) -> list[str]:
        """Columns where every model has per-image results on the same number of images."""
        out = []
        for column in columns:
            vectors = [self.get(m, column) for m in models]
            if all(v is not None for v in vectors) and len({len(v) for v in vectors}) == 1:
                out.append(column)
        return out


def _column_verdicts(claim: str, a_models: list[str], b_model: str, shared: list[str], per_image: PerImage,
                     alpha: float = 0.05):
    """The verdict of `claim` (A vs B) over the attack columns in `shared`, each column tested on its own.

    Directional claims ("a_better", "b_better"): one exact McNemar test per column, combined by Holm over the
    columns (paired_stats.decide_units). A group of repeats (SNS-rand) is averaged per image first and tested
    with the exact sign test over the images, so the repeats count as repeats, not as extra images. The other
    claims ("a_not_worse", "about_equal"): `decide` per column at Bonferroni alpha/n (interval at 1 - alpha/n),
    then supported if every column is, contradicted if any column is, partly if some are, else within noise."""
    import numpy as np

    if claim in ("a_better", "b_better"):
        units = []
        for column in shared:
            a = np.mean([per_image.get(m, column) for m in a_models], axis=0)
            b = per_image.get(b_model, column).astype(float)
            if len(a_models) == 1:
                units.append(mcnemar_unit(column, a.astype(bool), b.astype(bool), claim))
                continue
            test = sign_test(a, b, "a_greater" if claim == "a_better" else "a_less", alpha,
                             f"images (A averaged over its {len(a_models)} repeats)")
            units.append(UnitTest(column, test.p_claimed, test.p_against, test.statistic))
        verdict = decide_units(units, alpha, "attack columns")
        test = ("exact McNemar test per column" if len(a_models) == 1 else
                f"exact sign test per column on the per-image mean of the {len(a_models)} repeats")
        rule = f"{test}, one-sided in the claimed direction; " + verdict.rule
        return verdict.label, verdict.statistic, rule
    n = len(shared)
    labels, parts = [], []
    for column in shared:
        if len(a_models) != 1:
            raise ValueError(f"claim {claim!r} compares single models, got the group {a_models}")
        v = decide(per_image.get(a_models[0], column), per_image.get(b_model, column), claim, alpha=alpha / n)
        labels.append(v.label)
        parts.append(f"{column}: {v.label} ({v.statistic})")
    label = ("contradicted" if "contradicted" in labels else "supported" if set(labels) == {"supported"}
             else "partly" if "supported" in labels else "within noise")
    rule = (mcnemar_rule(claim, alpha / n, what="A vs B per attack column") + f" (Bonferroni: alpha {alpha:g} / "
            f"{n} columns); combined: supported if every column is, contradicted if any is, partly if some are "
            "supported and none contradicted, otherwise within noise")
    return label, f"{labels.count('supported')} of {n} columns supported: " + "; ".join(parts), rule


def paired_claim(text: str, source: str, claim: str, a_models: list[str], b_model: str, columns: list[str],
                 per_image: PerImage, final: pd.DataFrame, extension: bool = False):
    """One claim comparing model(s) A with model B over every attack column both were evaluated under, each
    column tested on the shared test images (advneurons.evaluation.paired_stats) and the columns combined by a
    stated multiple-testing rule (`_column_verdicts`); no p-value pools the same images over several columns.
    `claim` is a paired_stats claim ("a_better", "b_better", "a_not_worse", "about_equal")."""
    import numpy as np

    shared = per_image.shared_columns([*a_models, b_model], columns)
    if not shared:
        return Claim(text, None, f"no per-image results shared by {', '.join(a_models)} and {b_model}", source,
                     rule="needs per-image results of both models on the same images", extension=extension)
    acc = final.set_index("model")
    label, statistic, rule = _column_verdicts(claim, a_models, b_model, shared, per_image)
    parts = [f"{column} {np.mean([acc.loc[m, column] for m in a_models]):.1f} vs {acc.loc[b_model, column]:.1f}"
             for column in shared]
    a_name = a_models[0] if len(a_models) == 1 else f"mean of {', '.join(a_models)}"
    clean = ""
    if "Clean" in acc.columns:
        clean = f"; clean {np.mean([acc.loc[m, 'Clean'] for m in a_models]):.1f} vs {acc.loc[b_model, 'Clean']:.1f}"
    evidence = f"{a_name} vs {b_model} (%): " + "; ".join(parts) + clean + f"; {statistic}"
    return Claim(text, {"supported": True, "contradicted": False}.get(label), evidence, source, label, rule,
                 extension)


def _variant_models(block: pd.DataFrame, trainings: dict, variant: str) -> list[str]:
    return [r.model for r in block.itertuples() if (trainings.get(r.training) or {}).get("method") == "sns"
            and (trainings.get(r.training) or {}).get("variant", "sen") == variant]


def _method_models(block: pd.DataFrame, method: str) -> list[str]:
    return [r.model for r in block.itertuples() if r.method == method]


# The defense claims with the papers' signs: (A variant or method, relation, B, source, wording).
# "a_better": A beats B; "b_better": B beats A; "a_not_worse": A >= B; "about_equal": A ~ B.
PAPER_DEFENSE_CLAIMS = (
    (("sns", "sen"), "a_better", ("method", "pat"), "TIP V-C, Table III", "SNS-sen beats PAT"),
    (("sns", "sen"), "a_better", ("method", "alp"), "TIP V-C, Table III", "SNS-sen beats ALP"),
    (("sns", "sen"), "a_better", ("sns", "all"), "TIP V-C, Table III", "SNS-sen beats SNS-all"),
    (("sns", "rand"), "b_better", ("sns", "sen"), "TIP V-C, Table III", "SNS-sen beats the mean of SNS-rand"),
    (("sns", "rand"), "b_better", ("method", "pat"), "TIP V-C, Table III",
     "SNS-rand is worse than PAT (\"behaves even worse than the original PAT model\")"),
    (("sns", "dyn"), "about_equal", ("sns", "sen"), "TIP V-C, Table III", "SNS-dyn is about as robust as SNS-sen"),
    (("sns", "cls"), "a_better", ("method", "nat"), "ECCV Table 1", "SNS-cls beats NAT"),
    (("sns", "cls"), "a_better", ("method", "eat"), "ECCV Table 1", "SNS-cls beats EAT"),
    (("sns", "cls"), "b_better", ("method", "pat"), "ECCV Table 1", "SNS-cls stays below PAT"),
    (("method", "pat"), "a_not_worse", ("method", "alp"), "TIP Table III", "PAT is at least as robust as ALP"),
)

# The architectures each post-training defense's own paper applies it to; on another architecture its claims are
# marked as extensions (IG-Defense: ResNet18 / ResNet-50; MeanSparse: adversarially trained models of any kind).
DEFENSE_PAPER_ARCHS = {"ig_defense": ("resnet18", "resnet50")}

AUTOATTACK = "AutoAttack"
WHITEBOX = "L-inf PGD"  # the white-box column of the defense rule where no transfer check names one

DEFENSE_RULE = (
    "one rule for every post-training defense (MeanSparse, IG-Defense, any later one), on three pieces of "
    "evidence, each an exact McNemar test (one-sided: defended more accurate than its base model, alpha 0.05) "
    "on the same test images, Holm over the columns where a piece has several: (a) white-box gain: the defended "
    "model under the attack run on itself vs the base model under the same attack; (b) transfer gain: an image "
    "counts for the defended model only if both its white-box attack and the base model's transferred example "
    "fail on it, vs the base model's white-box result; (c) AutoAttack gain. Supported if (a), (b) and (c) are "
    f"all significant; \"{MASKING}\" if (a) is significant and (b) or (c) is not; within noise or contradicted "
    "as (a) reads if (a) is not significant; not checked if (a) is significant, nothing present says masking, "
    "but (b) or (c) is missing in this config (a white-box gain alone never counts as supported), or if the "
    "attack warned that the white-box evaluation is unreliable"
)


DEFENSE_RULE_SHORT = (
    "the defense rule (section note): supported only if the gain over the base model is significant under "
    "white-box attack, under the base model's transferred examples and under AutoAttack (exact McNemar each, "
    f"one-sided, alpha 0.05); a significant white-box gain without the other two: \"{MASKING}\"; no significant "
    "white-box gain: within noise or contradicted as that test reads; a missing piece of evidence: not checked"
)


def _members(block: pd.DataFrame, trainings: dict, kind: tuple[str, str]) -> list[str]:
    family, name = kind
    return _variant_models(block, trainings, name) if family == "sns" else _method_models(block, name)


def _gain_units(defended: str, base: str, columns: list[str], per_image: PerImage) -> list[UnitTest]:
    """White-box gain units: defended vs base per column, exact McNemar, where both have per-image results."""
    return [mcnemar_unit(c, per_image.get(defended, c), per_image.get(base, c))
            for c in per_image.shared_columns([defended, base], columns)]


def _transfer_units(transfer: pd.DataFrame | None, defended: str, per_image: PerImage) -> tuple[list, list[str]]:
    """Transfer gain units (one per transfer row of the defended model) and notes on rows that could not be
    tested: per image, the defended model counts as robust only if it resists both its own white-box attack and
    the base model's examples; that is compared with the base model's white-box results (exact McNemar)."""
    units, notes = [], []
    if transfer is None:
        return units, notes
    for row in transfer[transfer.model == defended].itertuples():
        notes.append(f"{row.column}: {row.base} {100 * row.base_whitebox:.2f}%; {row.model} white-box "
                     f"{100 * row.defended_whitebox:.2f}%, on {row.base}'s adversarial examples "
                     f"{100 * row.defended_transfer:.2f}% ({row.n_transfer} images); gain "
                     f"{100 * row.whitebox_gain:+.2f} points white-box, {100 * row.bounded_gain:+.2f} at the lower "
                     "of the two")
        whitebox, base = per_image.get(row.model, row.column), per_image.get(row.base, row.column)
        transferred = decode_correct(getattr(row, "transfer_correct_by_image", None))
        if whitebox is None or base is None or len(transferred) != len(whitebox) or len(base) != len(whitebox):
            notes[-1] += " (per-image results do not line up: not tested)"
            continue
        units.append(mcnemar_unit(f"{row.column} transferred", whitebox & transferred, base))
    return units, notes


def defense_robustness_claim(label: str, defended: pd.Series, base: pd.Series, per_image: PerImage,
                             transfer: pd.DataFrame | None, extension: bool = False, alpha: float = 0.05) -> Claim:
    """The claim "defense `label` raises the robustness of `base`", decided by DEFENSE_RULE."""
    model, base_model = defended["model"], base["model"]
    transfer_units, transfer_notes = _transfer_units(transfer, model, per_image)
    transfer_columns = [] if transfer is None else list(dict.fromkeys(transfer[transfer.model == model].column))
    whitebox_units = _gain_units(model, base_model, transfer_columns or [WHITEBOX], per_image)
    autoattack_units = _gain_units(model, base_model, [AUTOATTACK], per_image)
    text = (f"{label} raises the robustness of {base['training']} ({model} vs {base_model}): its gain holds under "
            f"white-box attack, survives the adversarial examples transferred from {base_model}, and holds under "
            "AutoAttack")
    pieces = {}
    for name, units in (("white-box", whitebox_units), ("transfer", transfer_units),
                        ("AutoAttack", autoattack_units)):
        pieces[name] = decide_units(units, alpha, "columns") if units else None
    evidence = "; ".join(f"{name} gain: " + (f"{v.label} ({v.statistic})" if v else "no evidence in this config")
                         for name, v in pieces.items())
    if transfer_notes:
        evidence += "; transfer check: " + " | ".join(transfer_notes)
    whitebox = pieces["white-box"]
    others = [v for name, v in pieces.items() if name != "white-box" and v is not None]
    missing = [name for name, v in pieces.items() if name != "white-box" and v is None]
    # the attack's own warnings (e.g. AutoAttack's that a weaker attack beat a stronger one) on any cell used
    warned = [f"{c}: {w}" for c in dict.fromkeys([*(transfer_columns or [WHITEBOX]), AUTOATTACK])
              for w in per_image.warnings.get((model, c), [])]
    if whitebox is None:
        outcome = "not checked"
        evidence = f"no white-box per-image results shared by {model} and {base_model}; " + evidence
    elif whitebox.label != "supported":
        outcome = "contradicted" if whitebox.label == "contradicted" else "within noise"
    elif any(v.label != "supported" for v in others):
        outcome = MASKING
    elif missing:
        outcome = "not checked"
        evidence += f"; missing evidence: {' and '.join(missing)} (a white-box gain alone is not counted)"
    else:
        outcome = "supported"
    if warned:
        evidence += f"; the attack warned: {' | '.join(warned)}"
        if outcome == "supported":  # the attack itself says a number may be inflated: the gain is not shown
            outcome = "not checked"
            evidence += f" (not counted: {model}'s evaluation may be unreliable)"
    return Claim(text, {"supported": True, "contradicted": False}.get(outcome), evidence, label, outcome,
                 DEFENSE_RULE_SHORT, extension)


def sensitivity_claim(sens: pd.DataFrame, training: str, other: str, layers: list[str],
                      alpha: float = 0.05) -> Claim:
    """TIP Fig 17: `training` has lower neuron sensitivity than `other` in the fine-tuned `layers`: Wilcoxon
    signed-rank test over the channels of those layers, paired by (layer, channel index)."""
    text = f"{training} has lower neuron sensitivity than {other} in the fine-tuned layers"
    top = sens[sens.layer.isin(layers)]
    means = top.groupby("training")["sensitivity"].mean()
    evidence = f"mean sensitivity over {', '.join(layers)}: {means[training]:.4g} vs {means[other]:.4g}"
    if "channel" not in top.columns:
        return Claim(text, None, evidence + "; per-channel values not in the table: no test", "TIP Fig 17",
                     "not checked", "needs per-channel sensitivities (Wilcoxon signed-rank over channels)")
    wide = top.pivot_table(index=["layer", "channel"], columns="training", values="sensitivity").dropna(
        subset=[training, other])
    verdict = wilcoxon_test(wide[training].to_numpy(), wide[other].to_numpy(), "a_less", alpha,
                            "channels of the fine-tuned layers, paired by layer and channel index")
    return Claim.decided(text, verdict, evidence, "TIP Fig 17")


def defense_claims(final_csv: Path, sensitivity_csvs: dict[str, Path], record_csvs: list[Path], settings_csv: Path,
                   trainings: dict, sns_layers: dict[str, list[str]] | None = None,
                   transfer_csv: Path | None = None) -> list:
    """Findings sections (advneurons.report.findings) on the defenses: the papers' defense claims with their signs,
    each decided by paired tests on the shared test images per attack column of the final table (combined by
    Holm or Bonferroni, `_column_verdicts`); the post-training defenses against their base models (DEFENSE_RULE:
    white-box, transfer and AutoAttack gains); and the per-layer sensitivity of the fine-tuned layers.
    `trainings` is the config's training section (to know each SNS variant)."""

    final = pd.read_csv(final_csv)
    final = final[final.training.astype(str) != ""].dropna(subset=["training"])  # drop group mean/std rows
    per_image = PerImage(read_records([Path(p) for p in record_csvs]), pd.read_csv(settings_csv))
    transfer = pd.read_csv(transfer_csv) if transfer_csv is not None else None
    layers = sns_layers or SNS_LAYERS
    sections = []
    attack_columns = [c for c in final.columns[4:] if c not in ("Clean", WORST_CASE)]
    for arch in dict.fromkeys(final.arch):
        claims = []
        block = final[final.arch == arch]
        for a_kind, relation, b_kind, source, wording in PAPER_DEFENSE_CLAIMS:
            a_models, b_models = _members(block, trainings, a_kind), _members(block, trainings, b_kind)
            if not a_models or not b_models:
                continue
            # a group of repeats (SNS-rand) is averaged per image; other kinds have one model per architecture
            groups = [a_models] if a_kind == ("sns", "rand") else [[m] for m in a_models]
            for a_group in groups:
                for b_model in b_models:
                    if b_kind == ("sns", "rand"):
                        continue
                    claims.append(paired_claim(f"{wording}: {' + '.join(a_group)} vs {b_model} over the attack suite",
                                               source, relation, a_group, b_model, attack_columns, per_image, final))
        for method, (label, suffix) in DEFENDED_METHODS.items():
            extension = method in DEFENSE_PAPER_ARCHS and arch not in DEFENSE_PAPER_ARCHS[method]
            for _, defended in block[block.method == method].iterrows():
                base = _row(final, arch, defended["training"].removesuffix(suffix))
                if base is None:
                    continue
                claims.append(defense_robustness_claim(label, defended, base, per_image, transfer, extension))
        sens_path = sensitivity_csvs.get(arch)
        sns_rows = block[block.method == "sns"]
        if sens_path is not None and len(sns_rows):
            sens = pd.read_csv(sens_path)
            trained = set(sens[sens.layer.isin(layers.get(arch, []))].training)
            for training in sns_rows.training:
                for other in ("vanilla", "pat"):
                    if training in trained and other in trained:
                        claims.append(sensitivity_claim(sens, training, other, layers.get(arch, [])))
        sections.append(Section(f"Defenses — {arch}", claims, note=(
            "Accuracy comparisons are decided on the shared test images, each attack column on its own (exact "
            "McNemar test on the images one model gets right and the other wrong, alpha 0.05), the columns "
            "combined by Holm-Bonferroni (directional claims) or Bonferroni (\"at least as robust\", \"about "
            "equal\"); no p-value pools the same images over several columns. SNS-rand's repeats are averaged per "
            "image (exact sign test over the images). \"About equal\" needs the interval of the paired difference "
            "inside +/-2 points. Post-training defenses: " + DEFENSE_RULE + ".")))
    return sections


def defense_findings(final_csv: Path, settings_csv: Path, record_csvs: list[Path], sensitivity_csvs: dict[str, Path],
                     trainings: dict, out_json: Path, transfer_csv: Path | None = None) -> list:
    """Workflow step: the defense claims as a findings sections file (appended to results/runs/<run>/findings.md)."""

    sections = defense_claims(final_csv, sensitivity_csvs, record_csvs, settings_csv, trainings,
                              transfer_csv=transfer_csv)
    write_sections_json(sections, out_json)
    return sections
