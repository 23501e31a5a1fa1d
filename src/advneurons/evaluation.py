"""Robustness tables from pair sets: one row per model, clean accuracy and accuracy under each attack."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .attacks import AttackSpec
from .pairs import open_pairs
from .runtime import atomic_path


@dataclass(frozen=True)
class TableEntry:
    """One pair set in the table: which model, which attack."""

    pairs_path: Path
    model: str  # display name, e.g. "vgg16-pat"
    arch: str
    training: str
    attack: str  # config name of the attack
    attack_settings: dict  # config entry of the attack (1/255 units)


def attack_column(entry: TableEntry, n_images: int) -> str:
    """Column header that states how the numbers were produced."""
    return f"{entry.attack}: {AttackSpec.from_config(entry.attack_settings).describe()}, n={n_images}"


def robustness_frame(entries: list[TableEntry]) -> pd.DataFrame:
    """Accuracies in percent. Clean accuracy is measured on the same images the attacks used."""
    rows: dict[str, dict] = {}
    for entry in entries:
        pairs = open_pairs(entry.pairs_path)
        clean_acc, adv_acc = pairs.accuracy()
        row = rows.setdefault(entry.model, {"model": entry.model, "arch": entry.arch, "training": entry.training})
        clean_col = f"clean, n={len(pairs)}"
        row[clean_col] = round(100 * clean_acc, 2)
        row[attack_column(entry, len(pairs))] = round(100 * adv_acc, 2)
    frame = pd.DataFrame(list(rows.values()))
    clean_cols = [c for c in frame.columns if c.startswith("clean")]
    attack_cols = [c for c in frame.columns if c not in clean_cols and c not in ("model", "arch", "training")]
    return frame[["model", "arch", "training", *clean_cols, *attack_cols]]


def write_table(frame: pd.DataFrame, csv_path: Path, md_path: Path, title: str) -> None:
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_path(md_path) as tmp:
        tmp.write_text(f"# {title}\n\n" + frame.to_markdown(index=False) + "\n")


def robustness_table(entries: list[TableEntry], csv_path: Path, md_path: Path, dataset: str) -> pd.DataFrame:
    frame = robustness_frame(entries)
    write_table(frame, csv_path, md_path, f"Robust accuracy (%) on the {dataset} test split; eps in 1/255 units")
    return frame
