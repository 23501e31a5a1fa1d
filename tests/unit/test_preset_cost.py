"""The cost model of bench/preset_cost.py: split sizes, merged configs, and how a run's own attack outcomes
(AutoAttack's robust images after each stage, black-box queries) turn into seconds."""

import gzip
import json
import sys

import pandas as pd
import pytest
import yaml

from workflow_helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import preset_cost  # noqa: E402  (bench/ is not a package)

UNITS = {"t_fwd": 1.0, "t_grad": 3.0, "t_train": 5.0, "pgd10_direct": 31.0, "cw4_direct": 16.0,
         "spsa_query": 1.5, "nattack_query": 2.0, "aa_apgd_ce": 4.0, "aa_apgd_t": 31.5, "aa_fab_t": 54.0,
         "aa_square": 1.25, "aa_apgd_ce_fixed": 7.0, "aa_apgd_t_fixed": 60.0, "aa_fab_t_fixed": 80.0,
         "aa_square_fixed": 2.0, "model_load": 0.5}


def test_digits_split_sizes_are_those_of_the_dataset_step():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    # sklearn's 1797 digits, 20% test and 10% validation, stratified (the default run's data/metadata.json)
    assert preset_cost.split_sizes(config) == {"train": 1257, "val": 180, "test": 360}


def test_cifar10_split_sizes_apply_the_caps_of_max_images():
    paper = yaml.safe_load((ROOT / "presets" / "cifar10_paper.yaml").read_text())
    assert preset_cost.split_sizes(paper) == {"train": 45000, "val": 5000, "test": 10000}
    rehearsal = yaml.safe_load((ROOT / "presets" / "cifar10_rehearsal.yaml").read_text())
    assert preset_cost.split_sizes(rehearsal) == {"train": 200, "val": 20, "test": 20}


def test_split_sizes_of_a_run_come_from_its_data_metadata(tmp_path):
    meta = tmp_path / "results" / "digits~x" / "data" / "metadata.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"splits": {"train": {"n": 90}, "val": {"n": 10}, "test": {"n": 20}}}))
    assert preset_cost.split_sizes({}, tmp_path) == {"train": 90, "val": 10, "test": 20}


def test_config_files_merge_in_order_like_snakemake(tmp_path):
    (tmp_path / "a.yaml").write_text("dataset: {name: cifar10, val_fraction: 0.1}\nseed: 0\n")
    (tmp_path / "b.yaml").write_text("dataset: {cifar10: {md5: abc}}\nseed: 3\n")
    merged = preset_cost.merged_config([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert merged == {"dataset": {"name": "cifar10", "val_fraction": 0.1, "cifar10": {"md5": "abc"}}, "seed": 3}


def test_autoattack_stages_cost_what_the_images_they_meet_cost():
    aa = {"type": "autoattack", "eps": 32}
    # before a run: APGD-CE on every image, the later stages on half of a robust model's, none of a vanilla one's
    # per stage: what it pays once, plus its iterations (APGD-T, FAB-T: all 9 target classes) or queries
    apgd, apgd_t, fab_t, square = 7 + 100 * 4.0, 60 + 100 * 31.5, 80 + 100 * 54.0, 2 + 5000 * 1.25
    assert preset_cost.attack_seconds(aa, UNITS, False, 0.5) == pytest.approx(apgd)
    assert preset_cost.attack_seconds(aa, UNITS, True, 0.5) == pytest.approx(apgd + 0.5 * (apgd_t + fab_t + square))
    # with a run's outcome: each stage meets the images still robust after the one before it
    after = {"clean": 0.9, "apgd-ce": 0.6, "apgd-t": 0.5, "fab-t": 0.4, "square": 0.3}
    expected = 0.9 * apgd + 0.6 * apgd_t + 0.5 * fab_t + 0.4 * square
    got = preset_cost.attack_seconds(aa, UNITS, True, 0.5, {"autoattack_after": after})
    assert got == pytest.approx(expected)
    # a stage AutoAttack skipped (nothing left) carries the count before it: nothing left, nothing spent
    none_left = {"clean": 1.0, "apgd-ce": 0.0}
    assert preset_cost.attack_seconds(aa, UNITS, True, 0.5, {"autoattack_after": none_left}) == pytest.approx(apgd)
    # an entry that leaves FAB-T out pays for the stages it runs, each on what the one before it left
    no_fab = {**aa, "stages": ["apgd-ce", "apgd-t", "square"]}
    assert preset_cost.attack_seconds(no_fab, UNITS, True, 0.5) == pytest.approx(apgd + 0.5 * (apgd_t + square))
    ran = {"clean": 0.9, "apgd-ce": 0.6, "apgd-t": 0.5, "square": 0.3}
    assert preset_cost.attack_seconds(no_fab, UNITS, True, 0.5, {"autoattack_after": ran}) == pytest.approx(
        0.9 * apgd + 0.6 * apgd_t + 0.5 * square)


def test_black_box_attacks_cost_their_queries():
    spsa = {"type": "spsa", "eps": 32, "steps": 50, "samples": 128}
    assert preset_cost.attack_seconds(spsa, UNITS, True, 0.5) == pytest.approx(50 * 128 * 1.5)
    assert preset_cost.attack_seconds(spsa, UNITS, True, 0.5, {"queries_per_image": 700.0}) == pytest.approx(1050)


def test_a_defended_model_pays_extra_for_the_model_passes_of_each_unit_only():
    slow = preset_cost.defended_units(UNITS, fwd_factor=2.0, grad_factor=3.0)
    assert slow["t_fwd"] == pytest.approx(2.0) and slow["t_grad"] == pytest.approx(9.0)
    assert slow["spsa_query"] == pytest.approx(1.5 + 1.0)  # one forward pass more; its noise draws cost the same
    assert slow["pgd10_direct"] == pytest.approx(31.0 + 1.0 + 10 * 6.0)
    assert slow["aa_apgd_t"] == pytest.approx(31.5 + 9 * 6.0)  # an iteration: one step per target class
    assert slow["t_train"] == UNITS["t_train"]  # a defense is attached after training


def test_run_outcomes_reads_autoattack_stages_and_queries_from_the_records(tmp_path):
    folder = tmp_path / "results" / "digits~x" / "robustness" / "vgg16-pat~1"
    folder.mkdir(parents=True)
    log = {"n_images": 4, "robust_accuracy_after_pct": {"clean": 100.0, "apgd-ce": 50.0, "apgd-t": 25.0}}
    pd.DataFrame([
        {"model": "vgg16-pat", "attack": "clean", "attack_type": "clean", "attack_log": ""},
        {"model": "vgg16-pat", "attack": "autoattack", "attack_type": "autoattack", "attack_log": json.dumps(log)},
    ]).to_csv(folder / "autoattack~2.csv", index=False)
    pd.DataFrame([{"model": "vgg16-pat", "attack": "clean", "attack_type": "clean", "attack_log": ""},
                  {"model": "vgg16-pat", "attack": "spsa", "attack_type": "spsa", "attack_log": ""}]
                 ).to_csv(folder / "spsa~3.csv", index=False)
    with gzip.open(folder / "spsa~3.images.csv.gz", "wt") as handle:
        pd.DataFrame({"attack": ["clean", "clean", "spsa", "spsa"], "queries": [-1, -1, 100, 300]}).to_csv(
            handle, index=False)
    outcomes = preset_cost.run_outcomes(tmp_path)
    assert outcomes[("vgg16-pat", "autoattack")] == {
        "autoattack_after": {"clean": 1.0, "apgd-ce": 0.5, "apgd-t": 0.25}}
    assert outcomes[("vgg16-pat", "spsa")] == {"queries_per_image": 200.0}
