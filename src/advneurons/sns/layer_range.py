"""SNS with different fine-tuned layer ranges (TIP Fig 16 / ECCV Fig 3b): robust accuracy per first stabilised layer.

Each model of the sweep is the same SNS fine-tuning of the same base model, stabilising and training the conv
layers from one first layer to the last one (the layers below stay frozen). The table gives, per architecture
and first layer, the clean accuracy and the accuracy under each attack with a Wilson 95% interval, so that two
ranges can be told apart from noise; the figure plots accuracy against the first stabilised layer.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from advneurons.report.figures import grid, save_figure
from advneurons.report.markdown import markdown_table, write_markdown
from advneurons.evaluation.paired_stats import wilson_interval
from advneurons.evaluation.robustness import CLEAN, read_records
from advneurons.runtime import atomic_path


def layer_range_table(records: pd.DataFrame, models: dict[str, dict], attacks: dict[str, str]) -> pd.DataFrame:
    """Long table: arch, first_layer, n_layers, model, column, accuracy_pct, ci_low_pct, ci_high_pct, n_images.

    `models`: model label -> {arch, first_layer, n_layers}; `attacks`: attack name -> column label."""
    rows = []
    columns = {CLEAN: "Clean", **attacks}
    for label, info in models.items():
        for attack, column in columns.items():
            found = records[(records.model == label) & (records.attack == attack)]
            if len(found) != 1:
                raise ValueError(f"{len(found)} records of model {label!r} under {attack!r}, expected one")
            rec = found.iloc[0]
            n = int(rec.n_images)
            low, high = wilson_interval(int(round(rec.accuracy * n)), n)
            rows.append({"arch": info["arch"], "first_layer": info["first_layer"], "n_layers": info["n_layers"],
                         "model": label, "column": column, "accuracy_pct": 100 * rec.accuracy,
                         "ci_low_pct": 100 * low, "ci_high_pct": 100 * high, "n_images": n})
    return pd.DataFrame(rows)


def sns_layer_range(record_csvs: list[Path], models: dict[str, dict], attacks: dict[str, str], training: str,
                    out_csv: Path, out_md: Path, out_png: Path) -> pd.DataFrame:
    """Workflow step: the layer-range table (CSV, Markdown with intervals) and its figure."""
    table = layer_range_table(read_records([Path(p) for p in record_csvs]), models, attacks)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    shown = table.assign(cell=[f"{a:.1f} [{lo:.1f}, {hi:.1f}]" for a, lo, hi in
                               zip(table.accuracy_pct, table.ci_low_pct, table.ci_high_pct)])
    wide = shown.pivot_table(index=["arch", "first_layer", "n_layers", "n_images"], columns="column", values="cell",
                             aggfunc="first", sort=False).reset_index()
    wide.columns.name = None
    notes = (f"{training} fine-tuned from each first stabilised layer to the last conv layer (n_layers layers trained "
             "and stabilised, the ones below frozen). Accuracy (%) on the test subset with its Wilson 95% interval.")
    write_markdown(out_md, f"# SNS fine-tuned layer ranges (TIP Fig 16)\n\n{notes}\n\n{markdown_table(wide)}\n")
    save_figure(layer_range_figure(table), out_png)
    return table


def layer_range_figure(table: pd.DataFrame):
    """Accuracy (%) per first stabilised layer, one panel per architecture, one line per attack column of
    `layer_range_table`; error bars: Wilson 95% intervals over the test images."""
    archs = list(dict.fromkeys(table.arch))
    fig, axes = grid(len(archs), panel_size=(5.2, 4.0))
    for ax, arch in zip(axes, archs):
        part = table[table.arch == arch]
        order = list(dict.fromkeys(part.first_layer))
        for column, rows in part.groupby("column", sort=False):
            x = [order.index(f) for f in rows.first_layer]
            ax.errorbar(x, rows.accuracy_pct, yerr=[rows.accuracy_pct - rows.ci_low_pct,
                                                    rows.ci_high_pct - rows.accuracy_pct],
                        marker="o", capsize=3, label=column)
        ax.set_xticks(range(len(order)), order, rotation=45)
        ax.set_xlabel("first stabilised (fine-tuned) layer")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(arch)
        ax.legend()
    fig.suptitle("SNS by fine-tuned layer range\nerror bars: Wilson 95% CI over the test images")
    return fig
