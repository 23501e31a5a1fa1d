"""Final comparison of models and defenses: the robustness table of every model x the attack suite (TIP
Tables III/IV shape), and per-layer neuron sensitivity of the models of one architecture (TIP Fig 17).

Models trained several times as seeded repeats of one defense (e.g. SNS-rand, 3 random channel sets)
share a ``group``; the table reports each repeat and a "mean ± std" row per group.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .markdown import markdown_table
from .robustness import accuracy_table, read_records, table_iii_columns
from .runtime import atomic_path


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
    records = read_records([Path(p) for p in record_csvs])
    unknown = sorted(set(records.model) - set(models))
    if unknown:
        raise ValueError(f"records of models not described in `models`: {unknown}")
    cols = table_iii_columns(records, columns)
    not_run = {(name, label) for name, m in models.items() for label in m.get("not_run", [])}
    table, settings = accuracy_table(records, cols, not_run)
    labels = [label for label, _ in cols]
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
    n = sorted(set(settings.n_images))
    notes = (f"Accuracy (%) on the {dataset} test split; images per cell: {', '.join(map(str, n))} "
             f"(slow attacks on seeded subsets); eps in 1/255 units. Settings of every cell: {Path(settings_csv).name}.")
    adaptive = sorted(set(settings.loc[settings.description.str.contains("EOT", na=False), "model"]))
    if adaptive:
        notes += (f" Randomised defenses ({', '.join(adaptive)}) are attacked adaptively: the attacks see their "
                  "expected logits over the noise (EOT).")
    if not_run:
        notes += " —: not evaluated under that attack (configuration)."
    with atomic_path(out_csv) as tmp:
        final.to_csv(tmp, index=False)
    with atomic_path(out_md) as tmp:
        body = "\n\n".join(
            f"## {arch}\n\n" + markdown_table(block.drop(columns="arch"), ".2f", missing="—")
            for arch, block in final.groupby("arch", sort=False)
        )
        tmp.write_text(f"# Final robustness: models and defenses x attack suite\n\n{notes}\n\n{body}\n")
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(max(6, 0.45 * summary.layer.nunique()), 4))
    sns.lineplot(data=summary, x="depth", y="sensitivity", hue="training", marker="o", ax=ax)
    layers = summary.drop_duplicates("depth").sort_values("depth")
    ax.set_xticks(layers.depth.to_numpy(), layers.layer.tolist(), rotation=60, fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean neuron sensitivity")
    ax.set_yscale("log")
    ax.set_title(f"{arch}: neuron sensitivity per layer by training")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)
    return summary


def group_of(training_name: str, training: dict) -> str:
    """Display group of a training entry: repeats of SNS-rand (differing only in ``repeat``) share one."""
    if training.get("method") == "sns" and training.get("variant") == "rand":
        return f"sns-rand (base {training.get('base')})"
    return training_name



# ------------------------------------------------------------------------------------------ claims
# Defenses built on a trained model: method -> (display name, suffix of their training name).
DEFENDED_METHODS = {"meansparse": ("MeanSparse", "_meansparse"), "ig_defense": ("IG-Defense", "_igdefense")}

def _row(final: pd.DataFrame, arch: str, training: str) -> pd.Series | None:
    rows = final[(final.arch == arch) & (final.training == training)]
    return rows.iloc[0] if len(rows) else None


def _compare(better: pd.Series, worse: pd.Series, column: str) -> tuple[bool, str]:
    a, b = float(better[column]), float(worse[column])
    return a > b, f"{column}: {better['model']} {a:.2f}% vs {worse['model']} {b:.2f}%"


def _transfer_claims(transfer: pd.DataFrame, defended: pd.Series, label: str) -> list:
    """Whether a defended model's gain over its base model survives the base model's transferred examples."""
    from .findings import Claim

    claims = []
    for row in transfer[transfer.model == defended["model"]].itertuples():
        evidence = (f"{row.column}: {row.base} {100 * row.base_whitebox:.2f}%; {row.model} white-box "
                    f"{100 * row.defended_whitebox:.2f}%, on {row.base}'s adversarial examples "
                    f"{100 * row.defended_transfer:.2f}% ({row.n_transfer} images); gain {100 * row.whitebox_gain:+.2f} "
                    f"points white-box, {100 * row.bounded_gain:+.2f} at the lower of the two")
        claims.append(Claim(
            f"{label}'s {row.column} gain over {row.base} survives the adversarial examples transferred from "
            f"{row.base} (read as: the lower of its white-box and transfer accuracies is above {row.base}'s)",
            bool(row.bounded_gain > 0), evidence, "transfer check (gradient masking)"))
    return claims


def defense_claims(final_csv: Path, sensitivity_csvs: dict[str, Path], robust_column: str = "L-inf PGD",
                   sns_layers: dict[str, list[str]] | None = None, transfer_csv: Path | None = None) -> list:
    """Findings sections (advneurons.findings) on the defenses, from the final table, the per-layer
    sensitivity of every model (architecture -> sensitivity_by_training CSV) and, when given, the transfer
    check of the defended models (advneurons.transfer)."""
    from .findings import Claim, Section
    from .sns_training import DEFAULT_LAYERS

    final = pd.read_csv(final_csv)
    transfer = pd.read_csv(transfer_csv) if transfer_csv is not None else None
    layers = sns_layers or DEFAULT_LAYERS
    sections = []
    attack_columns = [c for c in final.columns[4:] if c != "Clean"]  # means skip empty (not run) cells
    for arch in dict.fromkeys(final.arch):
        claims = []
        block = final[final.arch == arch]
        pat, alp = _row(final, arch, "pat"), _row(final, arch, "alp")
        sns_rows = block[block.method == "sns"]
        for _, sns in sns_rows.iterrows():
            for other, source in ((pat, "TIP Table III"), (alp, "TIP Table III")):
                if other is None:
                    continue
                ok, evidence = _compare(sns, other, robust_column)
                mean_sns = sns[attack_columns].mean()
                mean_other = other[attack_columns].mean()
                evidence += (f"; mean over the attack suite ({', '.join(attack_columns)}): "
                             f"{mean_sns:.2f}% vs {mean_other:.2f}%; clean {sns['Clean']:.2f}% vs {other['Clean']:.2f}%")
                claims.append(Claim(f"{sns['training']} is more robust than {other['training']} under {robust_column}",
                                    ok, evidence, source))
        for method, (label, suffix) in DEFENDED_METHODS.items():
            for _, defended in block[block.method == method].iterrows():
                base = _row(final, arch, defended["training"].removesuffix(suffix))
                if base is None:
                    continue
                drop = float(base["Clean"]) - float(defended["Clean"])
                # AutoAttack too where it was run: a gain under PGD alone can be gradient masking.
                for column in dict.fromkeys([robust_column, "AutoAttack"]):
                    if column not in final.columns or pd.isna(defended[column]) or pd.isna(base[column]):
                        continue
                    ok, evidence = _compare(defended, base, column)
                    claims.append(Claim(f"{label} raises the {column} accuracy of {base['training']}", ok,
                                        f"{evidence}; clean accuracy drop {drop:.2f} points", label))
                if transfer is not None:
                    claims += _transfer_claims(transfer, defended, label)
        sens_path = sensitivity_csvs.get(arch)
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
            "From results/tables/final_robustness.csv (accuracy %, same test images per column for every model) and "
            "the per-layer sensitivity figures. One run, one seed per model: small differences are within noise.")))
    return sections


def defense_findings(final_csv: Path, sensitivity_csvs: dict[str, Path], out_json: Path,
                     robust_column: str = "L-inf PGD", transfer_csv: Path | None = None) -> list:
    """Workflow step: the defense claims as a findings sections file (appended to results/findings.md)."""
    from .findings import write_sections_json

    sections = defense_claims(final_csv, sensitivity_csvs, robust_column, transfer_csv=transfer_csv)
    write_sections_json(sections, out_json)
    return sections
