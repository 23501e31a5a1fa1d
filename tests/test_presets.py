"""The paper preset dry-runs to the expected DAG, and its GPU profile declares GPUs where they matter."""

import shutil

import yaml

from advneurons import config as settings
from workflow_helpers import ROOT, planned_jobs


def test_paper_preset_plans_the_full_cifar10_dag(tmp_path):
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    jobs = planned_jobs(tmp_path, "all", "--configfile", str(ROOT / "presets" / "cifar10_paper.yaml"))
    assert jobs == {
        "download_cifar10": 1,
        "prepare_dataset": 1,
        # VGG16 and ResNet18: vanilla and PAT (analysed), and 10 defenses (ALP, NAT, EAT, 7 SNS variants)
        "train_model": 4 + 20,
        # 4 models x (FGSM, PGD pair sets; PGD eps 2 for sensitivity); the defenses' sensitivity pairs
        # + the ALP models' PGD pair sets, which the transfer check feeds their MeanSparse models
        "attack_pairs": 12 + 20 + 2,
        "neuron_sensitivity": 4 + 20,
        "sensitive_channels": 4,
        # 4 models x 15 attacks of TIP Tables III and I (+ AutoAttack); defenses x the 7 of Table III
        "evaluate_attack": 60 + (20 + 4 + 2) * 7,
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
        "all": 1,
    }


def test_paper_preset_uses_the_papers_settings():
    merged = yaml.safe_load((ROOT / "config.yaml").read_text())
    preset = yaml.safe_load((ROOT / "presets" / "cifar10_paper.yaml").read_text())
    assert set(preset) == set(merged), "the preset must set every top-level key of config.yaml"
    cfg = settings.validate_config(preset)
    assert cfg["dataset"]["name"] == "cifar10"
    assert {m["width"] for m in settings.model_entries(cfg).values()} == {1.0}
    assert cfg["attacks"]["pgd"]["eps"] == 8 and cfg["attacks"]["fgsm"]["eps"] == 8
    assert cfg["training"]["pat"]["eps"] == 8 and cfg["training"]["pat"]["steps"] == 10
    assert cfg["attacks"][cfg["sensitivity"]["attack"]]["eps"] == 2
    assert cfg["psn"]["eps"] == 8 and cfg["psn"]["bound_method"] == "CROWN"
    assert cfg["psn"]["deviation"]["pgd_eps"] == 8 and cfg["psn"]["deviation"]["pgd_steps"] == 40


def test_gpu_profile_declares_gpus_for_heavy_rules():
    profile = yaml.safe_load((ROOT / "profiles" / "slurm-gpu" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    for rule in ("train_model", "attack_pairs", "neuron_sensitivity", "evaluate_attack", "pgd_sweep"):
        assert profile["set-resources"][rule]["gpu"] == 1, rule
    # PSN code runs on the CPU: no GPU requested for it, but room for the paper preset's bounds
    assert "gpu" not in profile["set-resources"]["psn_scores"]
    assert profile["set-resources"]["psn_scores"]["mem_mb"] >= 16000 + 4000
