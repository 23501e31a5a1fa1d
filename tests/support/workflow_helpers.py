"""Running the real snakemake command line on the workflow from tests."""

import copy
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
SUPPORT = Path(__file__).resolve().parent


def snakemake(workdir: Path, *args: str, timeout: int = 1200, env: dict | None = None) -> subprocess.CompletedProcess:
    """The snakemake command line on `workdir`; tests/support is on the jobs' PYTHONPATH, as a user's own package
    would be, so that the tiny run's external model (external_factory) can be rebuilt in every job. `env` adds
    environment variables (e.g. ADVNEURONS_STEP_SERVER=off)."""
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", "2", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")])),
           **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def one_model_config(training: str = "vanilla") -> dict:
    """The quick preset cut to one model (VGG16 of `training`), two attacks and no analyses: a finished run in about
    a minute. Its ids equal those of the same model in the tiny run (same settings)."""
    import yaml

    cfg = yaml.safe_load((ROOT / "presets" / "quick.yaml").read_text())
    cfg["models"] = {"architectures": ["vgg16"], "training": [training]}
    cfg["robustness"]["table_iii"] = {"FGSM": "fgsm", "L-inf PGD": "pgd"}
    cfg["robustness"]["table_i"] = ["pgd"]
    cfg["sweeps"]["enabled"] = False
    for stage in ("sns", "psn", "sns_layer_range", "meansparse", "ig_defense"):
        cfg[stage] = {"enabled": False}
    cfg["defenses"] = {"training": [], "final_table": False}
    return cfg


def run_folder(workdir: Path) -> Path:
    """The results folder (results/runs/<run>~<config id>) of the one config that ran in `workdir`."""
    folders = sorted(p for p in (Path(workdir) / "results" / "runs").glob("*~*") if p.is_dir())
    assert len(folders) == 1, f"expected one run folder in {workdir}/results/runs, found {[p.name for p in folders]}"
    return folders[0]


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Jobs a dry run would execute, counted per rule."""
    # --quiet and --configfile take several values: keep targets and options apart from them.
    proc = snakemake(workdir, *args, "--dry-run", "--quiet", "rules")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return job_counts(proc.stdout + proc.stderr)


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The per-rule job counts of a dry run's "job count" table."""
    counts: dict[str, int] = {}
    in_table = False
    for line in dry_run_output.splitlines():
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


# ------------------------------------------------------------------ editing a copy of the workflow's code
WORKFLOW_PARTS = ("Snakefile", "rules", "workflow_scripts", "report", "profiles", "envs")


def defining_file(pkg: Path, name: str):
    """The one module of package folder `pkg` that defines `name` at its top level, and its definition."""
    import ast

    hits = [(path, node) for path in pkg.rglob("*.py") for node in ast.parse(path.read_text()).body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name]
    assert len(hits) == 1, f"{name} is defined {len(hits)} times in the package"
    return hits[0]


def edit_definition(pkg: Path, name: str, docstring_only: bool = False) -> None:
    """Change one line of code (or only the docstring) of definition `name` in package folder `pkg`."""
    import ast

    path, node = defining_file(pkg, name)
    lines = path.read_text().splitlines()
    has_doc = isinstance(node.body[0], ast.Expr) and isinstance(getattr(node.body[0], "value", None), ast.Constant)
    if docstring_only:
        assert has_doc, f"{name} has no docstring"
        lines[node.body[0].lineno - 1] = lines[node.body[0].lineno - 1].replace('"""', '"""Reworded. ', 1)
    else:
        first = node.body[1] if has_doc and len(node.body) > 1 else node.body[0]
        lines.insert(first.lineno - 1, " " * first.col_offset + "_edited = 1")
    path.write_text("\n".join(lines) + "\n")


def copy_of_workflow(dest: Path) -> Path:
    """A copy of the workflow (Snakefile, rules, scripts, ...) and of the package, modification times kept."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        source = ROOT / part
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, dest / part)
    shutil.copytree(ROOT / "src" / "advneurons", dest / "src" / "advneurons",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def dry_run_with_copy(code: Path, workdir: Path, *args: str) -> str:
    """The output of a dry run (with reasons) of the workflow copy `code`, with its own package, in `workdir`."""
    import os

    env = dict(os.environ, PYTHONPATH=str(code / "src"))
    cmd = [str(SNAKEMAKE), "-s", str(code / "Snakefile"), "-d", str(workdir), "--cores", "2", *args, "all",
           "--dry-run", "--quiet", "host"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def rules_with_changed_params(dry_run_output: str) -> set[str]:
    """Rules whose jobs a dry run re-runs because their params changed: with the config unchanged, exactly the
    rules whose code fingerprint changed."""
    lines = dry_run_output.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "params have changed since last execution:":
            return {name.strip() for name in lines[i + 1].split(",")}
    return set()
