"""The tiny workflow through snakemake-executor-plugin-slurm on a real single-node SLURM.

Starts munged, slurmctld and slurmd on loopback (installing Debian's packages if needed), runs the
workflow with the repository's SLURM profile, checks that every job ran as a SLURM job and that the
results equal those of the local run, and stops the daemons. Skipped where it cannot run (not root).
"""

import pandas as pd
import pytest
import yaml

import slurm_cluster
from workflow_helpers import ROOT, one_model_config, snakemake

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


# One model and the core stages keep the SLURM run short (every job pays the scheduler's latency); its ids
# equal those of the same model in the tiny run, so the results can be compared file by file.

EXPECTED_JOBS = {"prepare_dataset": 1, "train_model": 1, "attack_pairs": 2, "neuron_sensitivity": 1,
                 "sensitive_channels": 2, "evaluate_attack": 2, "robustness_table": 1, "robustness_table_i": 1,
                 "results_long": 1}


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm-run")
    (workdir / "config.yaml").write_text(yaml.safe_dump(one_model_config()))
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
    assert len(jobs) == sum(EXPECTED_JOBS.values())  # all jobs of the DAG but the local `all`
    assert {j["state"] for j in jobs} == {"COMPLETED"}
    rules = {}
    for job in jobs:
        rule = job["comment"].split("_wildcards")[0].removeprefix("rule_")
        rules[rule] = rules.get(rule, 0) + 1
    assert rules == EXPECTED_JOBS


def test_slurm_results_equal_the_local_run(slurm_run, tiny_run):
    workdir, _, _ = slurm_run
    remote_files = sorted(p.relative_to(workdir) for p in (workdir / "results").rglob("*.csv")
                          if "results/runs/" not in str(p))
    # training metrics, sensitivity, two top-k files, two robustness records
    assert len(remote_files) == 1 + 1 + 2 + 2
    for rel in remote_files:
        # wall-clock seconds per epoch are the one column that may differ between runs
        remote, local = (pd.read_csv(d / rel).drop(columns="seconds", errors="ignore") for d in (workdir, tiny_run))
        pd.testing.assert_frame_equal(remote, local)
    for rel in sorted(p.relative_to(workdir) for p in (workdir / "results").rglob("pairs.npz")):
        import numpy as np

        with np.load(workdir / rel) as a, np.load(tiny_run / rel) as b:
            assert all(np.array_equal(a[k], b[k]) for k in a.files)
