"""Every accuracy of a run in one long table (results/runs/<run>/tables/results_long.csv), the file a researcher loads into
pandas: one row per evaluation record (model x attack x settings), with its Wilson 95% interval and the lineage
of the number (checkpoint digest, code fingerprint, seed, device, versions, log and record files).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from advneurons.evaluation.robustness import (CLEAN, RECORD_COLUMNS, TableError, interval_pct, record_lineage,
                                              record_sidecars)
from advneurons.io import write_csv

LONG_COLUMNS = (
    "model", "arch", "training", "defense", "attack", "attack_type", "threat", "eps_255", "steps", "settings_id",
    "subset", "subset_attacks", "n_images", "accuracy_pct", "ci_low_pct", "ci_high_pct", "clean_on_images_pct",
    "description", "checkpoint_sha256", "code", "seed", "device", "versions", "log", "record_file",
)
# subset: which test images a record rests on, "all" (the whole test split) or "seeded <n>" (the seeded subset of n
# images that slow attacks run on; subsets of one seed are nested); subset_attacks: the attacks of that model
# evaluated on exactly those images, so that each of a model's clean rows (one per subset) says whose images it
# counts; clean_on_images_pct: the clean accuracy on exactly the record's images (its subset's clean row).


def _subset(record_csv: Path, n: int) -> str:
    """"all" or "seeded <n>": from the evaluation job's requested n_images (metadata) and, where the request was a
    number, the per-image records' test-split indices (a request of at least the split's size evaluates it all)."""
    meta_path = record_sidecars(record_csv)[1]
    requested = json.loads(meta_path.read_text()).get("params", {}).get("n_images") if meta_path.exists() else None
    if requested is None or int(requested) > n:
        return "all"
    images_path = record_sidecars(record_csv)[0]
    if images_path.exists():
        images = pd.read_csv(images_path, usecols=["attack", "index"])
        index = images.loc[images.attack == CLEAN, "index"].to_numpy()
        if len(index) == n and np.array_equal(np.sort(index), np.arange(n)):
            return "all"
    return f"seeded {n}"


def long_table(record_csvs: list[Path], models: dict[str, dict]) -> pd.DataFrame:
    """One row per distinct record of the given evaluation jobs (LONG_COLUMNS). `models` maps a model label to
    {arch, training, method}: `defense` is the method (vanilla, pat, sns, meansparse, ig_defense, ...). A clean
    accuracy measured on several subsets appears once per subset (each is a measurement), with the subset and the
    attacks evaluated on it; every row carries the clean accuracy on its own images."""
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
        # every job measures its model's clean accuracy on the same images as its attacks
        clean = {(r.model, int(r.n_images)): round(100.0 * float(r.accuracy), 2)
                 for r in records.itertuples() if r.attack == CLEAN}
        subsets = {n: _subset(path, n) for n in set(records.n_images.astype(int))}
        for rec in records.itertuples():
            if rec.model not in models:
                raise TableError(f"{path}: model {rec.model!r} is not one of the run's models")
            entry = models[rec.model]
            low, high = interval_pct(float(rec.accuracy), int(rec.n_images))
            rows.append({
                "model": rec.model, "arch": entry.get("arch", ""), "training": entry.get("training", ""),
                "defense": entry.get("method", ""), "attack": rec.attack, "attack_type": rec.attack_type,
                "threat": rec.threat, "eps_255": rec.eps_255, "steps": rec.steps, "settings_id": path.stem,
                "subset": subsets[int(rec.n_images)], "n_images": int(rec.n_images),
                "accuracy_pct": round(100.0 * float(rec.accuracy), 2), "ci_low_pct": low, "ci_high_pct": high,
                "clean_on_images_pct": clean.get((rec.model, int(rec.n_images)), float("nan")),
                "description": rec.description, **lineage,
            })
    frame = pd.DataFrame(rows, columns=list(LONG_COLUMNS))
    on_subset = frame[frame.attack != CLEAN].groupby(["model", "subset", "n_images"]).attack.agg(
        lambda a: ", ".join(sorted(set(a))))
    frame["subset_attacks"] = [on_subset.get(key, "") for key in zip(frame.model, frame.subset, frame.n_images)]
    # a model's clean record is repeated by every job on the same subset: one row per (model, subset)
    is_clean = frame.attack == CLEAN
    kept = pd.concat([frame[~is_clean], frame[is_clean].drop_duplicates(["model", "subset", "n_images"])])
    return kept.sort_index(kind="stable").reset_index(drop=True)


def results_long(record_csvs: list[Path], models: dict[str, dict], out_csv: Path) -> pd.DataFrame:
    """Workflow step: write :func:`long_table` as CSV."""
    frame = long_table(record_csvs, models)
    write_csv(frame, out_csv)
    return frame
