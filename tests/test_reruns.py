"""Exact partial re-runs: changing one parameter schedules exactly the jobs downstream of it.

Expected job counts are for the tiny config (.test/config.yaml): 2 architectures x 2 trainings = 4 models;
pair sets from fgsm and pgd; sensitivity from pgd with top 10% and 50%; 7 attacks in the robustness
tables (pgd among them); one PGD sweep per model.
"""

import pytest
import yaml

from workflow_helpers import planned_jobs, snakemake

EVERYTHING = {
    "prepare_dataset": 1, "train_model": 4, "attack_pairs": 8, "neuron_sensitivity": 4,
    "sensitive_channels": 8, "evaluate_attack": 28, "robustness_table": 1, "robustness_table_i": 1,
    "pgd_sweep": 4, "sweep_figures": 1, "all": 1,
}
# Two of the four models are retrained: everything computed from them follows.
TWO_MODELS = {
    "train_model": 2, "attack_pairs": 4, "neuron_sensitivity": 2, "sensitive_channels": 4,
    "evaluate_attack": 14, "robustness_table": 1, "robustness_table_i": 1, "pgd_sweep": 2, "sweep_figures": 1,
    "all": 1,
}

CHANGES = {
    "pgd eps": (
        {"attacks": {"pgd": {"eps": 24}}},
        # pgd feeds the pair sets behind the sensitivity files and both tables
        {"attack_pairs": 4, "neuron_sensitivity": 4, "sensitive_channels": 8, "evaluate_attack": 4,
         "robustness_table": 1, "robustness_table_i": 1, "all": 1},
    ),
    "PAT epochs": ({"training": {"pat": {"epochs": 2}}}, TWO_MODELS),
    "top-k percentage": (
        {"sensitivity": {"top_percent": [10, 25]}},
        {"sensitive_channels": 4, "all": 1},
    ),
    "dataset split seed": ({"dataset": {"split_seed": 1}}, EVERYTHING),
    "sensitivity form": (
        {"sensitivity": {"form": "eccv"}},
        {"neuron_sensitivity": 4, "sensitive_channels": 8, "all": 1},
    ),
    "ResNet width": ({"architectures": {"resnet18": {"width": 0.125}}}, TWO_MODELS),
    "images per pair set": (
        {"evaluation": {"n_images": 16}},
        {"attack_pairs": 8, "neuron_sensitivity": 4, "sensitive_channels": 8, "all": 1},
    ),
    "images per robustness attack": (
        {"robustness": {"n_images": 16}},
        # spsa keeps its own subset size (n_images_by_attack)
        {"evaluate_attack": 24, "robustness_table": 1, "robustness_table_i": 1, "all": 1},
    ),
    "sweep eps values": (
        {"sweeps": {"eps_values": [8, 16, 32]}},
        {"pgd_sweep": 4, "sweep_figures": 1, "all": 1},
    ),
}


def _override(tmp_path, change) -> str:
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(change))
    return str(path)


def test_nothing_planned_without_a_change(tiny_run):
    assert planned_jobs(tiny_run) == {}


@pytest.mark.parametrize("name", list(CHANGES))
def test_one_change_plans_exactly_its_downstream_jobs(tiny_run, tmp_path, name):
    change, expected = CHANGES[name]
    assert planned_jobs(tiny_run, "--configfile", _override(tmp_path, change)) == expected


def test_undoing_a_change_reuses_earlier_results(tiny_run, tmp_path):
    override = _override(tmp_path, {"sensitivity": {"top_percent": [10, 25]}, "attacks": {"pgd": {"eps": 24}}})
    proc = snakemake(tiny_run, "all", "--configfile", override)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(tiny_run, "--configfile", override) == {}
    # Back to the original config: both the old and the new results are on disk, nothing runs.
    assert planned_jobs(tiny_run) == {}
