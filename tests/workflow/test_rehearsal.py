"""Rehearsal of the paper preset (presets/cifar10_rehearsal.yaml): its whole DAG at full width on a small
CIFAR-10 archive in the official format, end to end, as a cluster user's run would meet it (shapes and memory at
full width, missing inputs, the preset's own settings). The end-to-end run is part of `make test` (about half an hour
on 2 cores) and marked `slow`, so that `-m 'not slow'` leaves it out of a quick run."""

import json
import shutil

import pandas as pd
import pytest
import yaml

from cifar_archive import write_tiny_cifar
from workflow_helpers import ROOT, planned_jobs, run_folder, snakemake

REHEARSAL = ROOT / "presets" / "cifar10_rehearsal.yaml"
PAPER = ROOT / "presets" / "cifar10_paper.yaml"


def _workdir(tmp_path):
    """A checkout-like working directory with a hand-placed archive where the preset expects it, and a
    config file naming its md5 (the official archive's is the preset's)."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    archive = tmp_path / "resources" / "cifar10" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True)
    md5 = write_tiny_cifar(archive, per_batch=20, n_test=20, learnable=True)  # 100 training images
    (tmp_path / "archive.yaml").write_text(yaml.safe_dump({"dataset": {"cifar10": {"md5": md5}}}))
    return ["--configfile", str(REHEARSAL), str(tmp_path / "archive.yaml")]


def test_rehearsal_plans_every_rule_of_the_paper_preset(tmp_path):
    options = _workdir(tmp_path)
    rehearsal = planned_jobs(tmp_path, "all", *options)
    paper = planned_jobs(tmp_path, "all", "--configfile", str(PAPER))
    assert set(rehearsal) == set(paper)
    assert sum(rehearsal.values()) < sum(paper.values())


@pytest.fixture(scope="module")
def rehearsal_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rehearsal")
    options = _workdir(workdir)
    proc = snakemake(workdir, "all", *options, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return workdir


def _data_dir(workdir):
    (data_dir,) = [p for p in (workdir / "results").iterdir() if p.name.startswith("cifar10~")]
    return data_dir


@pytest.mark.slow
def test_rehearsal_ran_every_job_at_full_width(rehearsal_run):
    data_dir = _data_dir(rehearsal_run)
    proc = snakemake(rehearsal_run, "-n", "all", "--configfile", str(REHEARSAL), str(rehearsal_run / "archive.yaml"))
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr
    metas = sorted((data_dir / "models").glob("*/metadata.json"))
    assert metas
    for path in metas:
        meta = json.loads(path.read_text())
        assert meta["params"]["width"] == 1.0 and meta["n_train"] == 90, path
        assert meta["versions"]["device"] in ("cpu", "cuda", "cuda:0"), path
    splits = json.loads((data_dir / "data" / "metadata.json").read_text())["splits"]
    # the archive's 100 training images less the 10% validation share, and its 20 test images (the preset's caps
    # are 200 and 20)
    assert (splits["train"]["n"], splits["val"]["n"], splits["test"]["n"]) == (90, 10, 20)


@pytest.mark.slow
def test_rehearsal_tables_have_every_model_and_attack_of_the_preset(rehearsal_run):
    final = pd.read_csv(run_folder(rehearsal_run) / "tables" / "final_robustness.csv")
    preset = yaml.safe_load(REHEARSAL.read_text())
    for column in preset["robustness"]["table_iii"]:
        assert column in final.columns, column
    assert len(final) >= 2 * (2 + len(preset["defenses"]["training"]))
    table_i = pd.read_csv(run_folder(rehearsal_run) / "tables" / "robustness_table_i.csv")
    assert len(table_i) == 4  # VGG16 and ResNet18, vanilla and PAT


@pytest.mark.slow
def test_rehearsal_psn_scores_the_last_nodes_at_full_width(rehearsal_run):
    from advneurons.models.layer_names import PSN_LAYERS

    score_dirs = sorted((_data_dir(rehearsal_run) / "psn").glob("*/psn~*"))
    assert len(score_dirs) == 2
    for d in score_dirs:
        arch = d.parent.name.split("-")[0]
        scores = pd.read_csv(d / "scores.csv.gz")
        assert list(dict.fromkeys(scores.layer)) == PSN_LAYERS["all"][arch][-4:]
        width = {"vgg16": 512, "resnet18": 512}[arch]
        assert scores[scores.layer == "flatten"].channel.nunique() == width  # full-width units
        meta = json.loads((d / "scores.json").read_text())
        assert meta["params"]["last_nodes"] == 4 and meta["bound_device"] in ("cpu", "cuda", "cuda:0")


@pytest.mark.slow
def test_every_job_log_of_the_rehearsal_names_its_device(rehearsal_run):
    logs = list((rehearsal_run / "logs").rglob("*.log"))
    assert logs
    for path in logs:
        head = path.read_text(errors="replace")
        assert "device: " in head, path
