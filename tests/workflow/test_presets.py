"""The paper preset dry-runs to the expected DAG, and its GPU profile declares GPUs where they matter."""

import shutil

import pytest
import yaml

from advneurons.config import settings
from workflow_helpers import ROOT, effective_config, planned_jobs


def test_paper_preset_plans_the_full_cifar10_dag(tmp_path):
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    jobs = planned_jobs(tmp_path, "all", "--configfile", str(ROOT / "presets" / "cifar10_paper.yaml"))
    assert jobs == {
        "download_cifar10": 1,
        "prepare_dataset": 1,
        # VGG16 and ResNet18: vanilla and PAT (analysed), 10 defenses (ALP, NAT, EAT, 7 SNS variants), and
        # SNS-sen from 4 more first layers per architecture (the fifth range is SNS-sen's own)
        "train_model": 4 + 20 + 8,
        # 4 models x (FGSM, PGD pair sets; sensitivity uses the PGD eps 8 ones); the defenses' sensitivity pairs
        # (L-inf PGD eps 8, also what the transfer check feeds the MeanSparse models of the ALP models)
        "attack_pairs": 8 + 20,
        "neuron_sensitivity": 4 + 20,
        "sensitive_channels": 4,
        # 4 models x 17 attacks of TIP Tables III and I (+ AutoAttack, Step-LL, MI-FGSM); defenses x the 9 of
        # Table III; the 8 extra layer-range models under L-inf PGD and FGSM
        "evaluate_attack": 68 + (20 + 4 + 2) * 9 + 8 * 2,
        "robustness_table": 1,
        "robustness_table_i": 1,
        "final_robustness_table": 1,
        "meansparse_model": 4,  # PAT and ALP models of both architectures; their cells below
        "sensitivity_by_training": 2,
        "defense_findings": 1,
        "pgd_sweep": 4 + 20 + 4 + 2,  # defenses.sweeps: every model and defense
        "ig_defense_model": 2,  # the PAT models of both architectures
        "ig_defense_analysis": 2,
        "transfer_check": 4 + 2,  # every MeanSparse and IG-Defense model under PGD
        "transfer_table": 1,
        "sweep_figures": 1,
        "sns_layer_range": 1,
        "targeted_pairs": 4,
        "targeted_neurons": 4,
        "importance_report": 4,
        "layer_similarity": 4,
        "suppression_study": 2,  # vanilla models, as in the paper
        "sensitivity_ratios": 4,
        "ratio_report": 2,
        "sensitivity_curves": 2,
        "findings": 1,
        "psn_scores": 2,  # the vanilla models, as in the PSN reference
        "psn_top_units": 2,
        "psn_deviation": 2,
        "psn_attack": 2,
        "psn_heatmaps": 4,  # two layers per architecture
        "psn_agreement": 2,
        "report_landing_page": 1,
        "results_long": 1,  # every accuracy of the run in one long table
        "all": 1,
    }


PRESETS = sorted((ROOT / "presets").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_runs_exactly_what_it_states(tmp_path, preset):
    # The workdir has the digits config.yaml, as a user's checkout does: nothing of it may reach the run.
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    effective = effective_config(tmp_path, preset)
    stated = settings.validate_config(yaml.safe_load(preset.read_text()))
    assert effective == stated


def test_config_files_on_the_command_line_merge_in_order(tmp_path):
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"seed": 7, "sweeps": {"eps": 16}}))
    effective = effective_config(tmp_path, tmp_path / "config.yaml", tmp_path / "mine.yaml")
    default = effective_config(tmp_path)
    assert effective["seed"] == 7 and effective["sweeps"]["eps"] == 16
    assert default["seed"] == 0 and default["dataset"]["name"] == "digits"
    assert {k: v for k, v in effective["sweeps"].items() if k != "eps"} == {
        k: v for k, v in default["sweeps"].items() if k != "eps"}


def test_paper_preset_uses_the_papers_settings():
    preset = yaml.safe_load((ROOT / "presets" / "cifar10_paper.yaml").read_text())
    cfg = settings.validate_config(preset)
    attacks = cfg["attacks"]
    assert cfg["dataset"]["name"] == "cifar10"
    assert {m["width"] for m in settings.model_entries(cfg).values()} == {1.0}
    assert attacks["pgd"]["eps"] == 8 and attacks["fgsm"]["eps"] == 8
    assert cfg["training"]["pat"]["eps"] == 8 and cfg["training"]["pat"]["steps"] == 10
    # TIP IV-A: every sensitivity measurement at eps 8, read at the BatchNorm output; eps 2 only in IV-D
    assert attacks[cfg["sensitivity"]["attack"]] == {**attacks["pgd"]} and cfg["sensitivity"]["site"] == "bn"
    assert attacks[cfg["sns"]["targeted"]["attack"]]["eps"] == 8
    suppression = {attacks[a]["type"]: attacks[a].get("eps") for a in cfg["sns"]["suppression"]["perturbations"]}
    assert suppression == {"pgd": 2, "pgd_l2": 80, "fgsm": 2, "gaussian": None}
    # SNS: the papers' lambda on every variant, channels chosen on the whole training split, at the bn site
    sns = {name: t for name, t in cfg["training"].items() if t["method"] == "sns"}
    assert len(sns) == 7
    for name, training in sns.items():
        assert training["sns_lambda"] == {"vgg16": 5, "resnet18": 6}, name
        assert training["select_images"] is None and training["site"] == "bn", name
    # C&W as the papers run it: c0 0.01, 3 x 300 iterations, unbounded; its image count is stated
    cw = attacks[cfg["robustness"]["table_iii"]["C&W"]]
    assert (cw["initial_const"], cw["search_steps"], cw["steps"], cw["confidence"], cw["eps"]) == (0.01, 3, 300, 0, None)
    assert cfg["robustness"]["n_images_by_attack"]["cw"] == 1000
    # ECCV Tables 1-2 columns
    assert attacks[cfg["robustness"]["table_iii"]["Step-LL"]] == {"type": "step_ll", "eps": 8}
    mi = attacks[cfg["robustness"]["table_iii"]["MI-FGSM"]]
    assert (mi["type"], mi["eps"], mi["steps"], mi["decay"]) == ("mifgsm", 8, 10, 1.0)
    assert cfg["psn"]["eps"] == 8 and cfg["psn"]["bound_method"] == "CROWN"
    assert cfg["psn"]["nodes"] == "all" and cfg["psn"]["zscore"] == "image"  # the reference's scripts
    assert cfg["psn"]["deviation"]["pgd_eps"] == 8 and cfg["psn"]["deviation"]["pgd_steps"] == 40


def test_gpu_profile_declares_gpus_for_heavy_rules():
    profile = yaml.safe_load((ROOT / "profiles" / "slurm-gpu" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    for rule in ("train_model", "attack_pairs", "neuron_sensitivity", "evaluate_attack", "pgd_sweep", "psn_scores"):
        assert profile["set-resources"][rule]["gpu"] == 1, rule
        assert profile["set-resources"][rule]["slurm_partition"] == "gpu", rule
    # PSN scores on the GPU partition, with room for the paper preset's bounds; the analyses on the CPU
    assert profile["set-resources"]["psn_scores"]["mem_mb"] >= 16000 + 4000
    assert "gpu" not in profile["set-resources"]["psn_deviation"]
