"""Failure drills: bad configs are refused before any job runs; a killed training job resumes to the
same weights; the same seed twice gives identical result tables."""

import os
import shutil
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch
import yaml

from workflow_helpers import ROOT, SNAKEMAKE, one_model_config, overlay, run_folder, snakemake

BAD_CONFIGS = {
    "wrong type": ({"seed": "zero"}, "seed"),
    "unknown key": ({"sensitivity": {"top_percents": [10]}}, "sensitivity"),
    "misspelt attack type": ({"attacks": {"pgd": {"type": "pgdd", "eps": 32}}}, "attacks.pgd.type"),
    "misspelt attack name": ({"evaluation": {"attacks": ["fgsm", "pdg"]}}, "evaluation.attacks[1]"),
    "misspelt architecture": ({"models": {"architectures": ["vgg16", "resnet81"]}}, "models.architectures.1"),
    "negative eps": ({"attacks": {"pgd": {"type": "pgd", "eps": -8}}}, "attacks.pgd.eps"),
    "empty list": ({"models": {"training": []}}, "models.training"),
}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_bad_config_is_refused_before_any_job(tmp_path, name):
    override, key = BAD_CONFIGS[name]
    shutil.copy(ROOT / "presets" / "quick.yaml", tmp_path / "config.yaml")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(override))
    proc = snakemake(tmp_path, "all", *overlay(tmp_path, tmp_path / "bad.yaml"))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"config key '{key}'" in out, out[-2000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_killed_training_job_resumes_to_the_same_weights_and_tables(tmp_path):
    """Kill the workflow while the 3-epoch PAT training is past its first epoch, then run again. The reference
    runs every step in its own process (ADVNEURONS_STEP_SERVER=off), the drill in the step server: the same
    weights and tables also show that the server changes no result."""
    cfg = one_model_config("pat")
    cfg["training"]["pat"]["epochs"] = 3
    cfg["sweeps"].update(enabled=True, steps_values=[1], eps_values=[32])
    reference = tmp_path / "reference"
    reference.mkdir()
    for workdir in (tmp_path, reference):
        (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    args = ["-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--cores", "1"]
    ref = snakemake(reference, "all", env={"ADVNEURONS_STEP_SERVER": "off"})
    assert ref.returncode == 0, ref.stderr[-3000:]

    proc = subprocess.Popen([str(SNAKEMAKE), "all", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    resume = None
    while time.monotonic() < deadline and resume is None:
        found = list((tmp_path / "results").glob("*/models/vgg16-pat~*/resume.pt"))
        resume = found[0] if found else None
        time.sleep(0.2)
    assert resume is not None, "training never wrote a resume file"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job tree, as a node failure would
    proc.wait()
    assert resume.exists() and not resume.with_name("model.pt").exists()

    # A killed Snakemake leaves its lock behind; --unlock is what a user runs next.
    assert snakemake(tmp_path, "--unlock").returncode == 0
    again = snakemake(tmp_path, "all")
    assert again.returncode == 0, again.stderr[-3000:]
    log = next((tmp_path / "logs").rglob("train_model/vgg16-pat~*.log")).read_text()
    assert "resuming from epoch" in log

    ref_model = next((reference / "results").glob("*/models/vgg16-pat~*/model.pt"))
    new_model = next((tmp_path / "results").glob("*/models/vgg16-pat~*/model.pt"))
    a = torch.load(ref_model, weights_only=True)["state_dict"]
    b = torch.load(new_model, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Same seed, same config: identical result tables.
    for table in ("robustness.csv", "robustness_table_i.csv", "pgd_sweep.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(run_folder(reference) / "tables" / table), pd.read_csv(run_folder(tmp_path) / "tables" / table)
        )
    for ref_csv in (reference / "results").rglob("sensitivity_tip_bn.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(ref_csv), pd.read_csv(tmp_path / ref_csv.relative_to(reference)))
