"""Exact partial re-runs: changing one parameter schedules exactly the jobs downstream of it.

Expected job counts are for the tiny config (presets/quick.yaml): 2 architectures x 2 trainings = 4 models;
pair sets from fgsm and pgd; sensitivity from pgd with top 10% and 50%; 7 attacks in the robustness
tables (pgd among them); one PGD sweep per model; the SNS analyses with suppression on the two vanilla models;
PSN scores and their analyses (one heatmap layer each) on the two vanilla models; four defenses (alp, nat,
eat, sns_sen) per architecture and MeanSparse on the PAT models, evaluated under the 5 table_iii attacks;
IG-Defense on the PAT models, evaluated under 2 of them; the transfer check (pgd) of the four defended models. EAT's static source models are the vanilla models of
both architectures. One external model (tests/conftest.py TINY_EXTERNAL): imported, evaluated under the 9 attacks
of both tables, measured for sensitivity, analysed per model (targeted sets, importance, layer similarity), and
defended by MeanSparse and IG-Defense (two more transfer checks), its suppression study and PSN (relu_inputs,
one heatmap layer), fine-tuned by SNS-sen (its own lambda, so
changing the training's lambda leaves it alone).
results_long gathers every evaluation, so it re-runs whenever any evaluation does.
"""

import shutil

import pytest
import yaml

from workflow_helpers import (copy_of_workflow, dry_run_with_copy, edit_definition, job_counts, overlay,
                              planned_jobs, rules_with_changed_params, run_folder, snakemake)

PER_MODEL = {  # jobs that exist once per model
    "train_model": 1, "attack_pairs": 2, "neuron_sensitivity": 1, "sensitive_channels": 2, "evaluate_attack": 9,
    "pgd_sweep": 1, "sensitivity_ratios": 1, "targeted_pairs": 1, "targeted_neurons": 1, "importance_report": 1,
    "layer_similarity": 1,
}
SUMMARIES = {  # jobs that gather over models: re-run when any of their models changes
    "robustness_table": 1, "robustness_table_i": 1, "sweep_figures": 1, "sensitivity_curves": 2,
    "ratio_report": 2, "findings": 1, "report_landing_page": 1, "all": 1,
}
PER_PSN_MODEL = {  # jobs that exist once per PSN-scored model (psn.training: the two vanilla models)
    "psn_scores": 1, "psn_top_units": 1, "psn_deviation": 1, "psn_attack": 1, "psn_heatmaps": 1, "psn_agreement": 1,
}
PER_DEFENSE_MODEL = {  # defenses (alp, nat, eat, sns_sen x 2 architectures): trained, pair set for sensitivity, suite
    "train_model": 1, "attack_pairs": 1, "neuron_sensitivity": 1, "evaluate_attack": 7,
}
DEFENSE_SUMMARIES = {"final_robustness_table": 1, "sensitivity_by_training": 2}
MEANSPARSE_PER_MODEL = {"meansparse_model": 1, "evaluate_attack": 7}  # the PAT models, defended
IG_PER_MODEL = {"ig_defense_model": 1, "ig_defense_analysis": 1, "evaluate_attack": 2}  # the PAT models, defended
# the transfer check (defenses.transfer: pgd) of a defended model, and the table gathering them
TRANSFER_PER_DEFENDED = {"transfer_check": 1}
TRANSFER_TABLE = {"transfer_table": 1}
# the SNS layer-range sweep: two extra fine-tunings (one per architecture), their pgd cell, the table
LAYER_RANGE = {"train_model": 2, "evaluate_attack": 2, "sns_layer_range": 1}
# the external model: imported, its pgd pair set (sensitivity, and the transfer checks of its defended models),
# sensitivity with its two top lists, the 9 attacks of both tables, the per-model SNS analyses (targeted sets), its
# PGD sweep, the suppression study, PSN with every analysis of it
EXTERNAL = {"import_model": 1, "attack_pairs": 1, "neuron_sensitivity": 1, "sensitive_channels": 2, "evaluate_attack": 9,
            "targeted_pairs": 1, "targeted_neurons": 1, "importance_report": 1, "layer_similarity": 1, "pgd_sweep": 1,
            "suppression_study": 1, **PER_PSN_MODEL}
EXTERNAL_SNS = {"train_model": 1, "evaluate_attack": 7}  # SNS-sen fine-tuned from it, under the table_iii attacks
RESULTS_LONG = {"results_long": 1}
# A changed config is another run: its tables, findings, figures and landing page go to its own folder
# (results/runs/<run>~<config id>), so every job that writes there runs once for it, from the reused intermediates.
RUN_LEVEL = {"robustness_table": 1, "robustness_table_i": 1, "sweep_figures": 1, "results_long": 1,
             "final_robustness_table": 1, "sensitivity_by_training": 2, "transfer_table": 1, "defense_findings": 1,
             "sns_layer_range": 1, "findings": 1, "report_landing_page": 1, "all": 1}


def _sum(*dicts):
    out = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


EVERYTHING = _sum({"prepare_dataset": 1}, {k: 4 * v for k, v in PER_MODEL.items()}, SUMMARIES,
                  {"suppression_study": 2}, {k: 2 * v for k, v in PER_PSN_MODEL.items()},
                  {k: 8 * v for k, v in PER_DEFENSE_MODEL.items()}, DEFENSE_SUMMARIES,
                  {k: 3 * v for k, v in MEANSPARSE_PER_MODEL.items()}, {k: 3 * v for k, v in IG_PER_MODEL.items()},
                  {k: 6 * v for k, v in TRANSFER_PER_DEFENDED.items()}, TRANSFER_TABLE, {"defense_findings": 1},
                  LAYER_RANGE, EXTERNAL, EXTERNAL_SNS, RESULTS_LONG)
ALL_TRANSFERS = _sum({k: 6 * v for k, v in TRANSFER_PER_DEFENDED.items()}, TRANSFER_TABLE)
PAT_TRANSFERS = _sum({k: 4 * v for k, v in TRANSFER_PER_DEFENDED.items()}, TRANSFER_TABLE)  # of the PAT models
TWO_TRANSFERS = _sum({k: 2 * v for k, v in TRANSFER_PER_DEFENDED.items()}, TRANSFER_TABLE)
THREE_TRANSFERS = _sum({k: 3 * v for k, v in TRANSFER_PER_DEFENDED.items()}, TRANSFER_TABLE)
# Two of the four models (both PAT or both ResNet) are retrained: everything computed from them follows.
TWO_MODELS = {**{k: 2 * v for k, v in PER_MODEL.items()}, **SUMMARIES, **DEFENSE_SUMMARIES}

CHANGES = {
    "pgd eps": (
        {"attacks": {"pgd": {"eps": 24}}},
        # pgd makes the pair sets behind the sensitivity files, the targeted sets, and cells of both tables
        {"attack_pairs": 4, "neuron_sensitivity": 4, "sensitive_channels": 8 + 2, "evaluate_attack": 4,
         "targeted_pairs": 5, "targeted_neurons": 5, "importance_report": 5, "layer_similarity": 5,
         "robustness_table": 1, "robustness_table_i": 1, "sensitivity_curves": 2, "suppression_study": 3,
         "ratio_report": 2, "findings": 1, "all": 1, "psn_agreement": 3,
         # the eight defense models: their sensitivity pair sets and their pgd cell
         "final_robustness_table": 1, "sensitivity_by_training": 2} | _sum(
            {"attack_pairs": 4, "neuron_sensitivity": 4, "evaluate_attack": 4},
            {"attack_pairs": 8, "neuron_sensitivity": 8, "evaluate_attack": 8},
            # IG-Defense (PAT models and the external one): its pgd cell and its analysis (pgd, undefended model)
            {"evaluate_attack": 3, "ig_defense_analysis": 3},
            # MeanSparse sweeps pgd: new defended models, all their cells
            {k: 3 * v for k, v in MEANSPARSE_PER_MODEL.items()},
            # the external model: its sensitivity pair set and what follows (its top lists: left), its pgd cell and
            # its SNS fine-tuning's
            {"attack_pairs": 1, "neuron_sensitivity": 1, "evaluate_attack": 1 + 1},
            # the PAT models' pgd pair sets and every white-box pgd cell feed the transfer checks
            ALL_TRANSFERS,
            # the layer-range models' pgd cells and their table
            {"evaluate_attack": 2, "sns_layer_range": 1}),
    ),
    "PAT epochs": (
        {"training": {"pat": {"epochs": 2}}},
        _sum(TWO_MODELS, {k: 2 * v for k, v in MEANSPARSE_PER_MODEL.items()},
             {k: 2 * v for k, v in IG_PER_MODEL.items()}, PAT_TRANSFERS),
    ),
    "top-k percentage": (
        {"sensitivity": {"top_percent": [10, 25]}},
        {"sensitive_channels": 4 + 1, "all": 1},
    ),
    "dataset split seed": ({"dataset": {"split_seed": 1}}, EVERYTHING),
    "sensitivity form": (
        {"sensitivity": {"form": "eccv"}},
        {"neuron_sensitivity": 4 + 8 + 1, "sensitive_channels": 8 + 2, "sensitivity_curves": 2, "suppression_study": 3,
         "ratio_report": 2, "findings": 1, "all": 1, "psn_agreement": 3, "sensitivity_by_training": 2},
    ),
    "sensitivity site": (
        {"sensitivity": {"site": "conv"}},
        # every sensitivity file (new paths) and what reads it; the targeted sets; and the SNS fine-tunings,
        # which choose and stabilise channels at the site: both SNS-sen models and the layer-range models
        _sum({"neuron_sensitivity": 4 + 8 + 1, "sensitive_channels": 8 + 2, "sensitivity_curves": 2,
              "suppression_study": 3, "ratio_report": 2, "findings": 1, "all": 1, "psn_agreement": 3, "targeted_neurons": 5,
              "importance_report": 5, "layer_similarity": 5},
             {k: 2 * v for k, v in PER_DEFENSE_MODEL.items() if k != "neuron_sensitivity"}, DEFENSE_SUMMARIES,
             LAYER_RANGE, EXTERNAL_SNS),
    ),
    "ResNet width": (
        {"architectures": {"resnet18": {"width": 0.125}}},
        # one architecture: its per-architecture summaries, its vanilla model's PSN jobs, its four defenses,
        # and the other architecture's EAT model, whose static sources include the ResNet's vanilla model
        _sum({**TWO_MODELS, "suppression_study": 1, "sensitivity_curves": 1, "ratio_report": 1,
              "sensitivity_by_training": 2}, PER_PSN_MODEL,
             {k: 5 * v for k, v in PER_DEFENSE_MODEL.items()}, MEANSPARSE_PER_MODEL, IG_PER_MODEL, TWO_TRANSFERS,
             {"train_model": 1, "evaluate_attack": 1, "sns_layer_range": 1}),  # its layer-range model
    ),
    "images per pair set": (
        {"evaluation": {"n_images": 16}},
        # the PAT models' pgd pair sets are what the transfer checks feed the defended models
        _sum({"attack_pairs": 8 + 8 + 1, "neuron_sensitivity": 4 + 8 + 1, "sensitive_channels": 8 + 2,
              "sensitivity_curves": 2,
              "suppression_study": 3, "ratio_report": 2, "findings": 1, "all": 1, "psn_agreement": 3,
              "sensitivity_by_training": 2}, ALL_TRANSFERS),
    ),
    "images per robustness attack": (
        {"robustness": {"n_images": 16}},
        # spsa keeps its own subset size (n_images_by_attack); defense models run the table_iii attacks,
        # IG-Defense its two; the external model both tables' attacks, its MeanSparse and IG-Defense like the PAT ones'
        _sum({"evaluate_attack": 4 * 8 + 8 * 6 + 2 * 6 + 2 * 2 + 8 + 6 + 2 + 6, "robustness_table": 1,
              "robustness_table_i": 1,
              "final_robustness_table": 1, "all": 1}, ALL_TRANSFERS, {"evaluate_attack": 2, "sns_layer_range": 1}),
    ),
    "sweep eps values": (
        {"sweeps": {"eps_values": [8, 16, 32]}},
        {"pgd_sweep": 4 + 1, "sweep_figures": 1, "all": 1},
    ),
    "suppression beta list": (
        {"sns": {"suppression": {"betas": [1.0, 0.7]}}},
        {"suppression_study": 3, "findings": 1, "all": 1},
    ),
    "images per target class": (
        {"sns": {"targeted": {"n_per_class": 4}}},
        {"targeted_pairs": 5, "targeted_neurons": 5, "importance_report": 5, "layer_similarity": 5,
         "findings": 1, "all": 1},
    ),
    "SNS lambda": (
        {"training": {"sns_sen": {"sns_lambda": 1.0}}},
        # both SNS-sen models and the layer-range models fine-tuned like them
        _sum({k: 2 * v for k, v in PER_DEFENSE_MODEL.items()}, DEFENSE_SUMMARIES, {"all": 1}, LAYER_RANGE),
    ),
    "MeanSparse alphas": (
        {"meansparse": {"alphas": [0, 0.5, 1.0]}},
        _sum({k: 3 * v for k, v in MEANSPARSE_PER_MODEL.items()}, {"final_robustness_table": 1, "all": 1},
             THREE_TRANSFERS),
    ),
    "IG-Defense mask size": (
        {"ig_defense": {"top_percent": 20}},
        _sum({k: 3 * v for k, v in IG_PER_MODEL.items()}, {"final_robustness_table": 1, "all": 1}, THREE_TRANSFERS),
    ),
    "PSN bound method": (
        {"psn": {"bound_method": "CROWN-IBP"}},
        # new scores: everything computed from them, for the three scored models (two vanilla, the external one)
        {**{k: 3 * v for k, v in PER_PSN_MODEL.items()}, "all": 1},
    ),
    # the heatmaps' PGD row uses the deviation study's PGD
    "PSN deviation PGD steps": (
        {"psn": {"deviation": {"pgd_steps": 3}}},
        {"psn_deviation": 3, "psn_heatmaps": 3, "all": 1},
    ),
    "PSN top percentages": ({"psn": {"top_percent": [1]}}, {"psn_top_units": 3, "all": 1}),
    "PSN images per architecture": (  # the external model has its own count
        {"psn": {"n_images": {"vgg16": 2, "resnet18": 1}}},
        {**PER_PSN_MODEL, "all": 1},
    ),
    "ratio images": (
        {"sns": {"ratios": {"n_images": 6}}},
        {"sensitivity_ratios": 4, "ratio_report": 2, "findings": 1, "all": 1},
    ),
}


def _override(tmp_path, change) -> str:
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(change))
    return str(path)


def test_nothing_planned_without_a_change(tiny_run):
    assert planned_jobs(tiny_run) == {}


def with_run_level(expected: dict) -> dict:
    """A changed config writes its run-level outputs (tables, findings, figures, landing page) to a folder of its
    own: every run-level job runs once for it, besides the jobs downstream of the change."""
    return {**expected, **RUN_LEVEL}


@pytest.mark.parametrize("name", list(CHANGES))
def test_one_change_plans_exactly_its_downstream_jobs(tiny_run, tmp_path, name):
    change, expected = CHANGES[name]
    assert planned_jobs(tiny_run, *overlay(tiny_run, _override(tmp_path, change))) == with_run_level(expected)


def test_undoing_a_change_reuses_earlier_results(tiny_run, tmp_path):
    """Two configs run one after the other in one working directory: each keeps its own tables, findings and
    figures (results/runs/<run>~<config id>), and going back to the first re-runs nothing."""
    # Work on a copy: the shared tiny run must stay exactly the result of the tiny config for the other tests.
    # copytree keeps modification times, so Snakemake sees the copy as up to date.
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    assert planned_jobs(workdir) == {}
    first = run_folder(workdir)
    first_files = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    # two settings that name their outputs' paths (top-k files, the suppression id); cheap to run for real
    override = _override(tmp_path, {"sensitivity": {"top_percent": [10, 25]},
                                    "sns": {"suppression": {"betas": [1.0, 0.7]}}})
    proc = snakemake(workdir, "all", *overlay(workdir, override))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(workdir, *overlay(workdir, override)) == {}
    # The second config's run-level outputs went to a folder of its own (the same `run` name, the quick preset's,
    # another config id); the first config's are untouched, byte for byte.
    folders = sorted((workdir / "results" / "runs").iterdir())
    assert len(folders) == 2 and first in folders, folders
    (second,) = [p for p in folders if p != first]
    assert second.name.split("~")[0] == first.name.split("~")[0] == "quick"
    for folder in (first, second):
        assert (folder / "tables" / "robustness.csv").exists() and (folder / "findings.md").exists()
    assert {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()} == first_files
    # Back to the original config: both the old and the new results are on disk, its own run folder included:
    # nothing to do.
    assert planned_jobs(workdir) == {}


# A definition edited in a copy of the package -> the rules whose jobs Snakemake re-runs because their params (the
# code fingerprint) changed. Their downstream jobs follow through newer inputs, and Snakemake gives those that
# reason instead (so C&W lists no robustness table: the tables are downstream of evaluate_attack). The exact set
# of steps whose fingerprint changes, downstream ones included, is checked in test_code_fingerprints.py.
CODE_EDIT_RULES = {
    "attack_pairs": {"attack_pairs"},  # pairs code
    "pair_ratios": {"sensitivity_ratios"},  # SNS ratios
    "mean_abs_deviation": {"psn_deviation"},  # PSN analysis
    # the C&W attack: every step that can run an attack from the catalog
    "cw_l2": {"attack_pairs", "evaluate_attack", "ig_defense_analysis", "meansparse_model", "pgd_sweep",
              "sensitivity_ratios"},
}
NEVER_FOR_THESE_EDITS = {"train_model", "psn_scores", "prepare_dataset"}  # none of them runs that code


@pytest.mark.parametrize("name", list(CODE_EDIT_RULES))
def test_a_code_edit_reruns_exactly_the_rules_that_run_that_code(tiny_run, tmp_path, name):
    code = copy_of_workflow(tmp_path / "code")
    edit_definition(code / "src" / "advneurons", name)
    output = dry_run_with_copy(code, tiny_run)
    assert rules_with_changed_params(output) == CODE_EDIT_RULES[name]
    assert not NEVER_FOR_THESE_EDITS & set(job_counts(output))


def test_docstring_edits_rerun_nothing(tiny_run, tmp_path):
    code = copy_of_workflow(tmp_path / "code")
    for name in ("attack_pairs", "cw_l2", "train_model", "psn_scores", "sns_findings"):
        edit_definition(code / "src" / "advneurons", name, docstring_only=True)
    output = dry_run_with_copy(code, tiny_run)
    assert rules_with_changed_params(output) == set() and "Nothing to be done" in output, output[-3000:]
