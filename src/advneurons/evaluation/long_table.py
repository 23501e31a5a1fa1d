"""Every accuracy of a run in one long table (results/tables/results_long.csv), the file a researcher loads into
pandas: one row per evaluation record (model x attack x settings), with its Wilson 95% interval and the lineage
of the number (checkpoint digest, code fingerprint, seed, device, versions, log and record files).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from advneurons.evaluation.robustness import RECORD_COLUMNS, TableError, interval_pct, record_lineage, record_sidecars
from advneurons.io import write_csv

LONG_COLUMNS = (
    "model", "arch", "training", "defense", "attack", "attack_type", "threat", "eps_255", "steps", "settings_id",
    "n_images", "accuracy_pct", "ci_low_pct", "ci_high_pct", "description", "checkpoint_sha256", "code", "seed",
    "device", "versions", "log", "record_file",
)


def long_table(record_csvs: list[Path], models: dict[str, dict]) -> pd.DataFrame:
    """One row per distinct record of the given evaluation jobs (LONG_COLUMNS). `models` maps a model label to
    {arch, training, method}: `defense` is the method (vanilla, pat, sns, meansparse, ig_defense, ...). A clean
    accuracy measured on several subset sizes appears once per size (each is a measurement)."""
    rows = []
    for path in map(Path, dict.fromkeys(map(str, record_csvs))):
        records = pd.read_csv(path)
        missing = [c for c in RECORD_COLUMNS if c not in records.columns]
        if missing:
            raise TableError(f"{path} is not a robustness records file: missing columns {', '.join(missing)}")
        lineage = record_lineage(path)
        if lineage is None:
            raise TableError(f"{path} has no metadata beside it ({record_sidecars(path)[1].name}); re-run its "
                             "evaluation job")
        for rec in records.itertuples():
            if rec.model not in models:
                raise TableError(f"{path}: model {rec.model!r} is not one of the run's models")
            entry = models[rec.model]
            low, high = interval_pct(float(rec.accuracy), int(rec.n_images))
            rows.append({
                "model": rec.model, "arch": entry.get("arch", ""), "training": entry.get("training", ""),
                "defense": entry.get("method", ""), "attack": rec.attack, "attack_type": rec.attack_type,
                "threat": rec.threat, "eps_255": rec.eps_255, "steps": rec.steps, "settings_id": path.stem,
                "n_images": int(rec.n_images), "accuracy_pct": round(100.0 * float(rec.accuracy), 2),
                "ci_low_pct": low, "ci_high_pct": high, "description": rec.description, **lineage,
            })
    frame = pd.DataFrame(rows, columns=list(LONG_COLUMNS))
    # a model's clean record is repeated by every job on the same subset: one row per (model, subset size)
    clean = frame.attack == "clean"
    kept = pd.concat([frame[~clean], frame[clean].drop_duplicates(["model", "n_images"])])
    return kept.sort_index(kind="stable").reset_index(drop=True)


def results_long(record_csvs: list[Path], models: dict[str, dict], out_csv: Path) -> pd.DataFrame:
    """Workflow step: write :func:`long_table` as CSV."""
    frame = long_table(record_csvs, models)
    write_csv(frame, out_csv)
    return frame
