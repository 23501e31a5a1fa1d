"""Names of the files an evaluation job writes beside its records CSV.

Kept apart from evaluation.robustness (which imports torch) because the workflow reads these names while it
parses: importing torch there costs every parse, dry run and cluster job seconds before it does anything.
"""

from __future__ import annotations

from pathlib import Path


def record_sidecars(record_csv: str | Path) -> tuple[Path, Path]:
    """(per-image records, metadata JSON) written by the evaluation job beside its records CSV."""
    path = Path(record_csv)
    return path.with_name(f"{path.stem}.images.csv.gz"), path.with_suffix(".json")
