"""Running the real snakemake command line on the workflow from tests."""

import copy
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


def effective_config(workdir: Path, *configfiles: Path) -> dict:
    """The config the workflow runs with, as Snakemake itself builds it (Snakefile parsed, schema defaults
    filled) when started in `workdir` with `--configfile` *configfiles (none: the workflow's config.yaml)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings(quiet=None)) as api:
        workflow = api.workflow(ResourceSettings(), ConfigSettings(configfiles=[Path(p) for p in configfiles]),
                                snakefile=ROOT / "Snakefile", workdir=Path(workdir))
        return copy.deepcopy(workflow._workflow.config)


def overlay(workdir: Path, override: Path | str) -> list[str]:
    """Command-line options that run `workdir`'s config.yaml with `override` merged on top: a config file on
    the command line replaces config.yaml, so both are named, in order (the README's way to combine files)."""
    return ["--configfile", str(Path(workdir) / "config.yaml"), str(override)]
