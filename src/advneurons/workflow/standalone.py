"""Run a workflow script by hand, outside Snakemake (the pattern of pypsa-eur's `mock_snakemake`).

Every script in workflow_scripts/ starts with

    smk = snakemake_object(globals())

so that `python workflow_scripts/train_model.py results/<data>/models/<model>/model.pt` runs that one step in the
current folder with exactly the inputs, params, threads and log file Snakemake would give it: the workflow is
parsed (config.yaml, or `--configfile FILE ...`), the rule whose script this is and whose output pattern matches
the file is found, and its job is built. Nothing upstream is run: the inputs must exist. Useful in a debugger or
a notebook; `snakemake <output file>` remains the way to make a file together with what it needs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

WORKFLOW_ROOT = Path(__file__).resolve().parents[3]  # the folder of the Snakefile (src/advneurons/workflow/..)


class StandaloneError(RuntimeError):
    """The command line names no file that this script makes, or the step's inputs are missing."""


def snakemake_object(namespace: dict):
    """The `snakemake` object of a workflow script: the one Snakemake injected into its globals, or, when the
    script is run by hand, the one `mock_snakemake` builds from the command line."""
    if "snakemake" in namespace:
        return namespace["snakemake"]
    return mock_snakemake(namespace["__file__"])


def parse_args(script: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python {os.path.relpath(script)}",
        description="Run this workflow step by hand for one of its output files (inputs must exist).",
    )
    parser.add_argument("target", help="an output file of the step, e.g. as `snakemake -n` lists it")
    parser.add_argument("--configfile", nargs="+", default=[], help="config files, as for snakemake")
    parser.add_argument("--snakefile", default=str(WORKFLOW_ROOT / "Snakefile"))
    return parser.parse_args(argv)


def mock_snakemake(script: str, argv: list[str] | None = None, workdir: str | Path = "."):
    """The `snakemake` object the step's script would get from Snakemake for the output file on the command
    line (`argv`, default sys.argv[1:]), with the run folder `workdir`."""
    from snakemake.api import SnakemakeApi
    from snakemake.dag import DAG
    from snakemake.iocontainers import Snakemake
    from snakemake.jobs import Job
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

    args = parse_args(script, sys.argv[1:] if argv is None else argv)
    script_name = Path(script).name
    workdir = Path(workdir).resolve()
    with SnakemakeApi(OutputSettings(quiet=None)) as api:
        workflow = api.workflow(
            ResourceSettings(),
            ConfigSettings(configfiles=[Path(p).resolve() for p in args.configfile]),
            snakefile=Path(args.snakefile),
            workdir=workdir,
        )._workflow
        rules = [r for r in workflow.rules if r.script and Path(r.script).name == script_name]
        if not rules:
            raise StandaloneError(f"no rule of {args.snakefile} runs {script_name}")
        matching = [r for r in rules if r.is_producer(args.target)]
        if not matching:
            patterns = "; ".join(str(pattern) for r in rules for pattern in r.output)
            raise StandaloneError(f"{args.target} is not an output of {script_name} (its outputs: {patterns})")
        rule = matching[0]
        workflow.dag_settings = DAGSettings()  # what the API sets when it builds a DAG itself
        dag = DAG(workflow, rules=[rule], targetfiles={args.target})
        job = Job(rule, dag, wildcards_dict=rule.get_wildcards(args.target), targetfile=args.target)
        missing = [f for f in job.input if not os.path.exists(workdir / f)]
        if missing:
            raise StandaloneError(
                f"inputs of {rule.name} for {args.target} are missing ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}): make them first with `snakemake {missing[0]}`"
            )
        for path in [*job.output, *job.log]:
            (workdir / path).parent.mkdir(parents=True, exist_ok=True)
        os.chdir(workdir)  # paths are relative to the run folder, as under Snakemake
        return Snakemake(job.input, job.output, job.params, job.wildcards, job.threads, job.resources, job.log,
                         workflow.config, rule.name, None, str(Path(script).resolve().parent))
