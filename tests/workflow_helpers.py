"""Running the real snakemake command line on the workflow from tests."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def snakemake(workdir: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Jobs a dry run would execute, counted per rule."""
    # --quiet and --configfile take several values: keep targets and options apart from them.
    proc = snakemake(workdir, *args, "--dry-run", "--quiet", "rules")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts: dict[str, int] = {}
    in_table = False
    for line in (proc.stdout + proc.stderr).splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
        elif in_table and parts and parts[0] == "total":
            break
    return counts
