"""The tiny workflow through snakemake-executor-plugin-slurm on a real single-node SLURM.

Starts munged, slurmctld and slurmd on loopback (installing Debian's packages if needed), runs the
workflow with the repository's SLURM profile, checks that every job ran as a SLURM job and that the
results equal those of the local run, and stops the daemons. Skipped where it cannot run (not root).
"""

import shutil

import pandas as pd
import pytest

import slurm_cluster
from workflow_helpers import ROOT, snakemake

reason = slurm_cluster.available()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")

# The sacct-free status query needs no accounting storage; a 2-core node needs 1-thread jobs.
TEST_FLAGS = [
    "--profile", str(ROOT / "profiles" / "slurm"),
    "--slurm-no-account", "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "1", "--jobs", "4",
    "--set-threads", "train_model=1", "attack_pairs=1", "neuron_sensitivity=1", "evaluate_attack=1", "pgd_sweep=1",
    "--set-resources", "train_model:mem_mb=3000", "attack_pairs:mem_mb=3000", "neuron_sensitivity:mem_mb=3000",
    "evaluate_attack:mem_mb=3000", "pgd_sweep:mem_mb=3000",
]


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm-run")
    shutil.copy(ROOT / ".test" / "config.yaml", workdir / "config.yaml")
    with slurm_cluster.slurm_cluster(tmp_path_factory.mktemp("slurm-cluster")) as env:
        import os

        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            proc = snakemake(workdir, "all", *TEST_FLAGS, timeout=1500)
            jobs = slurm_cluster.slurm_jobs(env)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return workdir, jobs, proc.stdout + proc.stderr


def test_every_job_ran_as_a_completed_slurm_job(slurm_run):
    _, jobs, _ = slurm_run
    # all jobs of the DAG except the local `all` rule
    from test_reruns import EVERYTHING

    assert len(jobs) == sum(EVERYTHING.values()) - 1  # all jobs but the local `all`
    assert {j["state"] for j in jobs} == {"COMPLETED"}
    rules = sorted({j["comment"].split("_wildcards")[0].removeprefix("rule_") for j in jobs})
    from test_reruns import EVERYTHING

    assert rules == sorted(set(EVERYTHING) - {"all"}), rules


def test_slurm_results_equal_the_local_run(slurm_run, tiny_run):
    workdir, _, _ = slurm_run
    local = pd.read_csv(tiny_run / "results" / "tables" / "robustness.csv")
    remote = pd.read_csv(workdir / "results" / "tables" / "robustness.csv")
    pd.testing.assert_frame_equal(local, remote)
    local_sens = sorted((tiny_run / "results").rglob("sensitivity_tip.csv"))
    remote_sens = sorted((workdir / "results").rglob("sensitivity_tip.csv"))
    assert [p.relative_to(tiny_run) for p in local_sens] == [p.relative_to(workdir) for p in remote_sens]
    for a, b in zip(local_sens, remote_sens):
        pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b))
