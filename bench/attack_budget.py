"""What a smaller iteration budget of the score-based black-box attacks (SPSA, NAttack) would have found in a run.

Both attacks stop working on an image once it is misclassified, and a run with T' < T iterations performs exactly
the first T' iterations of a run with T (the same random draws, in the same order, on the same images). So the
per-image query counts of one run at the configured budget T tell, for every T' <= T, which images T' iterations
would have fooled: an image fooled after t iterations spent 1 + t * (queries per iteration). This script reads
them from a finished run's per-image records (`<attack>.images.csv.gz`); where a record has none (a run made before
they existed), it re-runs that evaluation from the parameters in the record's metadata, on the same model, images
and seed, in a temporary folder.

    .venv/bin/python bench/attack_budget.py --run <run directory> [--attacks spsa nattack] [--steps 10 20 30 40]

Prints, per model and attack: the images evaluated, the accuracy at each budget T' and at T, how many images the
budget T' leaves unfooled that T fools, the last iteration at which any image was fooled, and the share of the
queries T' spends; then the totals over all models.
"""

from __future__ import annotations

import argparse
import ast
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ATTACK_TYPES = ("spsa", "nattack")


def queries_per_iteration(entry: dict) -> int:
    """Model queries one iteration spends on an image still attacked (the attacks' own accounting)."""
    samples = int(entry["samples"])
    return (2 * (samples // 2) if entry["type"] == "spsa" else samples) + 1


def fooled_iteration(images: pd.DataFrame, per_iteration: int) -> pd.Series:
    """Per image: the iteration after which it was first misclassified (0: at the start point); NaN when the
    attack never fooled it."""
    t = (images["queries"] - 1) / per_iteration
    return t.where(~images["correct"].astype(bool))


def budget_rows(model: str, attack: str, entry: dict, images: pd.DataFrame, budgets: list[int]) -> list[dict]:
    steps = int(entry["steps"])
    per_iteration = queries_per_iteration(entry)
    fooled_at = fooled_iteration(images, per_iteration)
    full_queries = images["queries"].sum()
    rows = []
    for budget in [b for b in budgets if b < steps] + [steps]:
        fooled = fooled_at <= budget
        spent = np.minimum(images["queries"], 1 + budget * per_iteration).sum()
        rows.append({
            "model": model, "attack": attack, "steps": budget, "n": len(images),
            "accuracy_pct": 100.0 * (1 - fooled.mean()),
            "missed_vs_full": int((fooled_at.notna() & ~fooled).sum()),
            "last_fooling_iteration": int(fooled_at.max()) if fooled_at.notna().any() else -1,
            "queries": int(spent), "queries_at_full": int(full_queries),
            "query_share_pct": 100.0 * spent / full_queries,
        })
    return rows


def records(run: Path, attack_types: tuple[str, ...]):
    """(model, attack name, attack entry, metadata path) of every evaluation job of the run under these types
    (of a folder re-run under other settings, only the latest jobs: run_profile.current_files)."""
    from run_profile import current_files

    for meta_path in current_files(run.glob("results/*/robustness/*/*.json")):
        meta = json.loads(meta_path.read_text())
        params = meta.get("params")
        params = ast.literal_eval(params) if isinstance(params, str) else params
        for name, entry in (params or {}).get("attacks", {}).items():
            if entry.get("type") in attack_types:
                yield params["model_name"], name, entry, meta_path, params


def per_image(run: Path, meta_path: Path, params: dict, scratch: Path) -> pd.DataFrame:
    """The record's per-image results: the file beside it, else a re-run of the same evaluation."""
    beside = meta_path.with_name(f"{meta_path.stem}.images.csv.gz")
    if beside.exists():
        frame = pd.read_csv(beside)
        return frame[frame.attack != "clean"]
    import torch

    from advneurons.evaluation.robustness import _load_subset, evaluate_model

    torch.set_num_threads(1)
    model, _, images, labels, index = _load_subset(run / params["model"], run / params["test"],
                                                   params["n_images"], params.get("seed", 0))
    _, frame = evaluate_model(model, images, labels, params["attacks"], params["model_name"],
                              params.get("seed", 0), params.get("batch_size", 256), index=index)
    frame.to_csv(scratch / f"{params['model_name']}-{meta_path.stem}.images.csv.gz", index=False)
    return frame[frame.attack != "clean"]


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run's working directory")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACK_TYPES), choices=ATTACK_TYPES)
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 20, 25, 30, 40])
    parser.add_argument("--out", type=Path, help="also write the table to this CSV")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for model, name, entry, meta_path, params in records(args.run, tuple(args.attacks)):
            images = per_image(args.run, meta_path, params, Path(scratch))
            if images["queries"].lt(0).any():
                raise SystemExit(f"{meta_path}: per-image records without query counts")
            rows += budget_rows(model, name, entry, images, args.steps)
            print(pd.DataFrame(rows[-len(args.steps) - 1:]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    total = table.groupby(["attack", "steps"]).agg(
        models=("model", "nunique"), images=("n", "sum"), missed_vs_full=("missed_vs_full", "sum"),
        last_fooling_iteration=("last_fooling_iteration", "max"), queries=("queries", "sum"),
        queries_at_full=("queries_at_full", "sum"))
    total["query_share_pct"] = (100.0 * total.queries / total.queries_at_full).round(1)
    print("\nover all models\n" + total.to_string())
    if args.out:
        table.to_csv(args.out, index=False)
    return table


if __name__ == "__main__":
    main()
