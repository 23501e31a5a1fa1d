# What every stage file uses: the validated config, the plan of the run (registries of models and attacks,
# the parameter-encoding ids that name every output, result paths) and the per-job input and params
# functions. All of it is plain, unit-tested Python in advneurons.workflow; this file only binds it.

from snakemake.utils import min_version

from advneurons import integrity
from advneurons.config import run_space, settings
from advneurons.workflow import step_server as step_server_module
from advneurons.workflow import targets
from advneurons.workflow.fingerprints import script_fingerprint
from advneurons.workflow.plan import WILDCARD_PATTERNS, Plan, split_file
from advneurons.workflow.wiring import JobWiring

min_version("9.0")


# A config without a `run` name takes the name of the file it came from (the preset's); its tables, findings
# and figures go to results/runs/<run>~<config id>/ (advneurons.config.run_space).
run_space.fill_run_name(config, workflow.overwrite_configfiles)
# Fills schema defaults in place and names the offending key on error, before any job is scheduled.
settings.validate_config(config)
plan = Plan(config)
jobs = JobWiring(plan)
# Before any job is scheduled (in a dry run too): every checkpoint, pair set and split of the run that has a
# sha256 record must still match it, else one error names each damaged file and the command that re-makes it,
# and no job starts, so Snakemake deletes no output (advneurons.integrity). Only in the process that schedules
# the jobs: a SLURM job or a subprocess re-parsing this file checks nothing again.
if not (workflow.remote_exec or workflow.subprocess_exec):
    integrity.check_run(
        plan,
        integrity.command_options(
            workflow.overwrite_configfiles, workflow.config_settings.config_args
        ),
    )


wildcard_constraints:
    **WILDCARD_PATTERNS,
    arch="|".join(plan.archs),


def code_version(script):
    """Fingerprint of exactly the package code that workflow_scripts/<script>.py runs: editing that code
    re-runs the step, editing anything else (or a comment, or a docstring) does not (workflow/fingerprints.py).
    """
    return script_fingerprint(
        os.path.join(workflow.basedir, "workflow_scripts", f"{script}.py")
    )


def dataset_inputs(wildcards):
    """ancient(): re-verifying the CIFAR-10 archive (after a change of url) rewrites its record but not the
    data; the splits depend on the archive's md5, which is among their params.
    """
    return {k: ancient(v) for k, v in jobs.dataset_inputs(wildcards).items()}


# The run's step server, once onstart has started it (none under SLURM or when switched off).
step_servers = []


def start_step_server():
    # Only where this process runs the jobs itself: not for a cluster executor's jobs, nor --touch.
    if (
        not workflow.local_exec
        or workflow.touch
        or workflow.remote_exec
        or workflow.subprocess_exec
    ):
        return
    # The log goes beside Snakemake's own (.snakemake/log/); logs/ holds one log per job.
    server = step_server_module.start_for_run(
        os.path.join(workflow.basedir, "workflow_scripts"),
        os.path.join(".snakemake", "log", "step_server.log"),
    )
    if server is not None:
        step_servers.append(server)


def stop_step_server():
    while step_servers:
        step_servers.pop().stop()
