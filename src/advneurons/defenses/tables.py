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
from advneurons.evaluation.robustness import (INTERVAL_NOTE, WORST_CASE, accuracy_table, attack_report,
                                              mark_warned_cells, read_lineage, read_record_images, read_records,
                                              table_iii_columns, with_intervals)
from advneurons.models.layer_names import SNS_LAYERS
from advneurons.runtime import atomic_path
from advneurons.evaluation.paired_stats import decide, decide_pooled
from advneurons.evaluation.robustness import CLEAN, decode_correct
from advneurons.report.findings import Claim, Section, write_sections_json


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
    if WORST_CASE in labels:
        notes += " " + INTERVAL_NOTE + " Group mean and std rows have no interval."
    adaptive = sorted(set(settings.loc[settings.description.str.contains("EOT", na=False), "model"]))
    if adaptive:
        notes += (f" Randomised defenses ({', '.join(adaptive)}) are attacked adaptively: the attacks see their "
                  "expected logits over the noise (EOT).")
    if not_run:
        notes += " —: not evaluated under that attack (configuration)."
    with atomic_path(out_csv) as tmp:
        final.to_csv(tmp, index=False)
    marked, warned = mark_warned_cells(with_intervals(final, settings), settings)
    body = "\n\n".join(
        f"## {arch}\n\n" + markdown_table(block.drop(columns="arch"), ".2f", missing="—")
        for arch, block in marked.groupby("arch", sort=False)
    )
    write_markdown(out_md, f"# Final robustness: models and defenses x attack suite\n\n{notes}\n\n{body}\n"
                   + (f"\n{warned}\n" if warned else ""))
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
    """Workflow step (TIP Fig 17): mean neuron sensitivity of each conv layer for every model of one
    architecture (training label -> its sensitivity CSV), as a table and a line figure."""
    frames = []
    for training, path in sensitivity_csvs.items():
        table = pd.read_csv(path)
        missing = {"layer", "depth", "sensitivity"} - set(table.columns)
        if missing:
            raise ValueError(f"{path} is not a sensitivity table: missing {sorted(missing)}")
        per_layer = table.groupby(["depth", "layer"], sort=True)["sensitivity"].mean().reset_index()
        per_layer.insert(0, "training", training)
        frames.append(per_layer)
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
    sns.lineplot(data=summary, x="depth", y="sensitivity", hue="training", marker="o", errorbar=None, ax=ax)
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


def paired_claim(text: str, source: str, claim: str, a_models: list[str], b_model: str, columns: list[str],
                 per_image: PerImage, final: pd.DataFrame):
    """One claim comparing model(s) A with model B over every attack column both were evaluated under,
    decided by an exact McNemar test on the shared test images (advneurons.evaluation.paired_stats).

    The verdict pools the columns (and, for a group of repeats such as SNS-rand, the repeats) as paired
    observations; the evidence gives each column's accuracies and verdict. `claim` is a paired_stats claim
    ("a_better", "b_better", "a_not_worse", "about_equal")."""
    import numpy as np

    shared = per_image.shared_columns([*a_models, b_model], columns)
    if not shared:
        return Claim(text, None, f"no per-image results shared by {', '.join(a_models)} and {b_model}", source)
    acc = final.set_index("model")
    parts = []
    for column in shared:
        a_vectors = [per_image.get(m, column) for m in a_models]
        b_vector = per_image.get(b_model, column)
        verdict = (decide(a_vectors[0], b_vector, claim) if len(a_models) == 1
                   else decide_pooled(a_vectors, b_vector, claim))
        a_acc = np.mean([acc.loc[m, column] for m in a_models])
        parts.append(f"{column} {a_acc:.1f} vs {acc.loc[b_model, column]:.1f} ({verdict.label})")
    a_all = [np.concatenate([per_image.get(m, c) for c in shared]) for m in a_models]
    b_all = np.concatenate([per_image.get(b_model, c) for c in shared])
    verdict = decide(a_all[0], b_all, claim) if len(a_models) == 1 else decide_pooled(a_all, b_all, claim)
    a_name = a_models[0] if len(a_models) == 1 else f"mean of {', '.join(a_models)}"
    clean = ""
    if "Clean" in acc.columns:
        clean = f"; clean {np.mean([acc.loc[m, 'Clean'] for m in a_models]):.1f} vs {acc.loc[b_model, 'Clean']:.1f}"
    evidence = f"{a_name} vs {b_model} (%): " + "; ".join(parts) + clean + f"; pooled over {len(shared)} column(s)"
    return Claim.decided(text, verdict, evidence, source)


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


def _members(block: pd.DataFrame, trainings: dict, kind: tuple[str, str]) -> list[str]:
    family, name = kind
    return _variant_models(block, trainings, name) if family == "sns" else _method_models(block, name)


def _transfer_claims(transfer: pd.DataFrame, defended: pd.Series, label: str, per_image: PerImage) -> list:
    """Whether a defended model's gain over its base model survives the base model's transferred examples:
    per image, the defended model counts as robust only if it resists both its own white-box attack and the
    base model's examples; that is compared with the base model's white-box results (exact McNemar)."""

    claims = []
    for row in transfer[transfer.model == defended["model"]].itertuples():
        evidence = (f"{row.column}: {row.base} {100 * row.base_whitebox:.2f}%; {row.model} white-box "
                    f"{100 * row.defended_whitebox:.2f}%, on {row.base}'s adversarial examples "
                    f"{100 * row.defended_transfer:.2f}% ({row.n_transfer} images); gain {100 * row.whitebox_gain:+.2f} "
                    f"points white-box, {100 * row.bounded_gain:+.2f} at the lower of the two")
        text = (f"{label}'s {row.column} gain over {row.base} survives the adversarial examples transferred from "
                f"{row.base} (an image counts as robust only if both attacks fail on it)")
        whitebox = per_image.get(row.model, row.column)
        base = per_image.get(row.base, row.column)
        transferred = decode_correct(getattr(row, "transfer_correct_by_image", None))
        if whitebox is None or base is None or len(transferred) != len(whitebox) or len(base) != len(whitebox):
            claims.append(Claim(text, None, evidence + "; per-image results do not line up: not tested",
                                "transfer check (gradient masking)"))
            continue
        claims.append(Claim.decided(text, decide(whitebox & transferred, base, "a_better"), evidence,
                                    "transfer check (gradient masking)"))
    return claims


def defense_claims(final_csv: Path, sensitivity_csvs: dict[str, Path], record_csvs: list[Path], settings_csv: Path,
                   trainings: dict, sns_layers: dict[str, list[str]] | None = None,
                   transfer_csv: Path | None = None) -> list:
    """Findings sections (advneurons.report.findings) on the defenses: the papers' defense claims with their signs,
    each decided by a paired test on the shared test images over every attack column of the final table;
    the post-training defenses against their base models; and the per-layer sensitivity of the fine-tuned
    layers. `trainings` is the config's training section (to know each SNS variant)."""

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
            # a group of repeats (SNS-rand) is pooled; other kinds have one model per architecture
            groups = [a_models] if a_kind == ("sns", "rand") else [[m] for m in a_models]
            for a_group in groups:
                for b_model in b_models:
                    if b_kind == ("sns", "rand"):
                        continue
                    claims.append(paired_claim(f"{wording}: {' + '.join(a_group)} vs {b_model} over the attack suite",
                                               source, relation, a_group, b_model, attack_columns, per_image, final))
        for method, (label, suffix) in DEFENDED_METHODS.items():
            for _, defended in block[block.method == method].iterrows():
                base = _row(final, arch, defended["training"].removesuffix(suffix))
                if base is None:
                    continue
                # AutoAttack too where it was run: a gain under PGD alone can be gradient masking.
                for column in ("L-inf PGD", "AutoAttack"):
                    if column not in final.columns or pd.isna(defended[column]) or pd.isna(base[column]):
                        continue
                    claim = paired_claim(f"{label} raises the {column} accuracy of {base['training']}", label,
                                         "a_better", [defended["model"]], base["model"], [column], per_image, final)
                    warned = per_image.warnings.get((defended["model"], column))
                    if warned and claim.verdict == "supported":
                        # the attack itself says the number may be inflated: a gain cannot count as shown
                        claim = Claim(claim.text, None, f"{claim.evidence}; not counted: the attack warned that "
                                      f"{defended['model']}'s evaluation is unreliable ({' | '.join(warned)})",
                                      claim.source, "not checked")
                    elif warned:
                        claim = Claim(claim.text, claim.supported, f"{claim.evidence}; the attack warned: "
                                      f"{' | '.join(warned)}", claim.source, claim.outcome)
                    claims.append(claim)
                if transfer is not None:
                    claims += _transfer_claims(transfer, defended, label, per_image)
        sens_path = sensitivity_csvs.get(arch)
        sns_rows = block[block.method == "sns"]
        if sens_path is not None and len(sns_rows):
            sens = pd.read_csv(sens_path)
            top = sens[sens.layer.isin(layers.get(arch, []))]
            means = top.groupby("training")["sensitivity"].mean()
            for training in sns_rows.training:
                for other in ("vanilla", "pat"):
                    if training in means and other in means:
                        ok = bool(means[training] < means[other])
                        claims.append(Claim(
                            f"{training} has lower neuron sensitivity than {other} in the fine-tuned layers", ok,
                            f"mean sensitivity over {', '.join(layers.get(arch, []))}: {means[training]:.4g} vs "
                            f"{means[other]:.4g}", "TIP Fig 17"))
        sections.append(Section(f"Defenses — {arch}", claims, note=(
            "Accuracy comparisons are decided on the shared test images: exact McNemar test on the images one "
            "model gets right and the other wrong (alpha 0.05), pooled over the attack columns both models were "
            "evaluated under (and over the SNS-rand repeats); each column's verdict is in the evidence. "
            "\"About equal\" needs the 95% interval of the paired difference inside +/-2 points. Pooled p-values "
            "are approximate: the same images appear in every column.")))
    return sections


def defense_findings(final_csv: Path, settings_csv: Path, record_csvs: list[Path], sensitivity_csvs: dict[str, Path],
                     trainings: dict, out_json: Path, transfer_csv: Path | None = None) -> list:
    """Workflow step: the defense claims as a findings sections file (appended to results/findings.md)."""

    sections = defense_claims(final_csv, sensitivity_csvs, record_csvs, settings_csv, trainings,
                              transfer_csv=transfer_csv)
    write_sections_json(sections, out_json)
    return sections
