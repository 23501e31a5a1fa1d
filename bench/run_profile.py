"""Where a run's time went: every job's benchmark file (benchmarks/, written by Snakemake's `benchmark:`) summed
per rule and per rule family (the rules/*.smk file that defines the rule: data, train, attack, evaluate,
sensitivity, sns, psn, defenses, report).

Seconds are each job's wall time (`s`) and CPU time (`cpu_time`); with --cores 2 the run's wall time is at least
the sum of job seconds / 2. A job that ran in the step server (advneurons.workflow.step_server) has its worker's
CPU time in the last line of its log (the benchmark measured the waiting script): it is added, and `in_server`
counts those jobs. Run after a run, from the directory that holds its benchmarks/ and logs/:

    .venv/bin/python bench/run_profile.py [--benchmarks benchmarks] [--logs logs] [--top 15] [--wall MINUTES]

--wall (the run's measured wall time) adds each family's share of the 2-core budget and the idle remainder.
A folder re-run after a setting changed still holds the older jobs' files; only the newest of each job counts
(:func:`current_files`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from advneurons.workflow.step_server import parse_log_line

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_HASH = re.compile(r"~[0-9a-f]{8}")


def current_files(paths) -> list[Path]:
    """The files of a run folder's latest jobs, in path order. Outputs, logs and benchmarks are named
    `<name>~<hash of its settings>`, so a folder re-run after a setting changed keeps the older jobs' files beside
    the new ones, under other hashes: of files whose paths differ only in those hashes, the newest (by modification
    time) is the run's. The others are named on stdout and left out."""
    newest: dict[str, Path] = {}
    for path in sorted(paths):
        key = SETTINGS_HASH.sub("", str(path))
        if key in newest:
            older, path = sorted((newest[key], path), key=lambda p: p.stat().st_mtime)
            print(f"left out, from older settings: {older}", flush=True)
        newest[key] = path
    return sorted(newest.values())


def rule_families(rules_dir: Path = ROOT / "rules") -> dict[str, str]:
    """Rule name -> family, the stem of the .smk file that defines it."""
    out = {}
    for smk in sorted(rules_dir.glob("*.smk")):
        for rule in re.findall(r"^rule (\w+):", smk.read_text(), re.M):
            out[rule] = smk.stem
    return out


def job_table(benchmarks: Path, families: dict[str, str], logs: Path | None = None) -> pd.DataFrame:
    """One row per job: its rule (the first path component of the benchmark file that names a rule), family,
    wall seconds, CPU seconds (with the step server's worker, from the job's log under `logs`) and whether the
    job ran in the step server."""
    rows = []
    for path in current_files(benchmarks.rglob("*.tsv")):
        parts = path.relative_to(benchmarks).with_suffix("").parts
        rule = next((p for p in parts if p in families), None)
        if rule is None:
            continue
        frame = pd.read_csv(path, sep="\t")
        log = None if logs is None else logs / path.relative_to(benchmarks).with_suffix(".log")
        worker = parse_log_line(log.read_text(errors="replace")) if log is not None and log.exists() else None
        rows.append({"rule": rule, "family": families[rule], "job": "/".join(parts),
                     "s": float(frame["s"].iloc[0]),
                     "cpu_s": float(frame["cpu_time"].iloc[0]) + (worker["cpu_s"] if worker else 0.0),
                     "in_server": worker is not None})
    if not rows:
        raise SystemExit(f"no benchmark files of known rules under {benchmarks}")
    return pd.DataFrame(rows)


def summarise(jobs: pd.DataFrame, by: str) -> pd.DataFrame:
    table = jobs.groupby(by).agg(jobs=("s", "size"), in_server=("in_server", "sum"), wall_s=("s", "sum"),
                                 cpu_s=("cpu_s", "sum"), median_job_s=("s", "median"))
    table["share_%"] = 100 * table["wall_s"] / table["wall_s"].sum()
    return table.sort_values("wall_s", ascending=False).round(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", type=Path, default=Path("benchmarks"))
    parser.add_argument("--logs", type=Path, default=Path("logs"), help="the run's logs/ (step-server jobs' CPU)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--wall", type=float, help="the run's wall time in minutes")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    jobs = job_table(args.benchmarks, rule_families(), args.logs)
    pd.set_option("display.width", 140)
    families = summarise(jobs, "family")
    if args.wall:
        families["of_budget_%"] = (100 * families["wall_s"] / (args.wall * 60 * args.cores)).round(1)
    print(f"{len(jobs)} jobs ({int(jobs.in_server.sum())} in the step server), {jobs.s.sum() / 60:.1f} job-minutes of wall time "
          f"({jobs.s.sum() / 60 / args.cores:.1f} min on {args.cores} cores if always busy)")
    if args.wall:
        idle = 100 * (1 - jobs.s.sum() / (args.wall * 60 * args.cores))
        print(f"run wall time {args.wall:.1f} min: {idle:.0f}% of the {args.cores}-core budget idle or in Snakemake")
    print("\nby family\n" + families.to_string())
    print("\nby rule\n" + summarise(jobs, "rule").to_string())
    print(f"\nlongest {args.top} jobs\n" + jobs.nlargest(args.top, "s")[["job", "s", "cpu_s"]].round(1).to_string(index=False))
    cheap = jobs[jobs.s < 10]
    print(f"\njobs under 10 s: {len(cheap)}, {cheap.s.sum() / 60:.1f} job-minutes")


if __name__ == "__main__":
    main()
