"""Inputs of the defense claims (final table, its settings, per-image records) built from accuracies."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from advneurons.evaluation.robustness import accuracy_record, records_frame

# column label of the final table -> (attack name, attack config entry)
ATTACKS = {
    "L-inf PGD": ("pgd", {"type": "pgd", "eps": 32, "steps": 10}),
    "FGSM": ("fgsm", {"type": "fgsm", "eps": 32}),
    "AutoAttack": ("autoattack", {"type": "autoattack", "eps": 32}),
}


def correct_vector(accuracy_pct: float, n: int) -> torch.Tensor:
    """The first round(accuracy * n) images correct: vectors of two models are nested, so every discordant
    image favours the more accurate one (the paired test's most decisive case)."""
    k = int(round(accuracy_pct / 100 * n))
    return torch.arange(n) < k


def write_claim_inputs(tmp_path: Path, rows: list[list], columns: list[str], n: int) -> dict:
    """rows: [arch, model, training, method, Clean, *attack columns] (accuracy %, None: not run).
    Writes final.csv, settings.csv and one records CSV; returns their paths."""
    final = pd.DataFrame(rows, columns=["arch", "model", "training", "method", "Clean", *columns])
    final.to_csv(tmp_path / "final.csv", index=False)
    records, settings = [], []
    for row in final.itertuples(index=False):
        values = dict(zip(final.columns, row))
        clean = correct_vector(values["Clean"], n)
        records.append(accuracy_record(values["model"], "clean", None, n, float(clean.float().mean()), clean))
        for column in columns:
            if values[column] is None or not np.isfinite(values[column]):
                continue
            attack, cfg = ATTACKS[column]
            correct = correct_vector(values[column], n)
            records.append(accuracy_record(values["model"], attack, cfg, n, float(correct.float().mean()), correct))
            settings.append({"model": values["model"], "column": column, "attack": attack, "n_images": n})
    records_frame(records).to_csv(tmp_path / "records.csv", index=False)
    pd.DataFrame(settings).to_csv(tmp_path / "settings.csv", index=False)
    return {"final": tmp_path / "final.csv", "settings": tmp_path / "settings.csv",
            "records": [tmp_path / "records.csv"]}


def write_transfer(tmp_path: Path, entries: list[tuple], n: int, base: str = "vgg16-pat",
                   base_whitebox: float = 0.70, column: str = "L-inf PGD") -> Path:
    """A transfer check table (advneurons.evaluation.transfer.COLUMNS plus the column label): one row per
    (defended model, white-box accuracy, accuracy on the base model's transferred examples), fractions; the
    transferred examples' per-image results are nested like `correct_vector`'s."""
    rows = []
    for model, wb, tr in entries:
        rows.append({"model": model, "base": base, "attack": ATTACKS[column][0], "column": column,
                     "description": "", "n_transfer": n, "base_clean": 0.98, "base_whitebox": base_whitebox,
                     "defended_clean": 0.97, "defended_whitebox": wb, "defended_transfer": tr, "n_whitebox": n,
                     "upper_bound": min(wb, tr), "whitebox_gain": wb - base_whitebox,
                     "bounded_gain": min(wb, tr) - base_whitebox,
                     "transfer_correct_by_image": "".join("y" if c else "n"
                                                          for c in correct_vector(100 * tr, n).tolist())})
    pd.DataFrame(rows).to_csv(tmp_path / "transfer.csv", index=False)
    return tmp_path / "transfer.csv"
