"""The workflow's plan, per-job wiring and targets (advneurons.workflow), checked without Snakemake."""

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from advneurons.config import settings
from advneurons.workflow import targets
from advneurons.workflow.plan import WILDCARD_PATTERNS, Plan
from advneurons.workflow.wiring import JobWiring

ROOT = Path(__file__).resolve().parents[2]


def plan_of(name="presets/quick.yaml", mutate=None):
    config = yaml.safe_load((ROOT / name).read_text())
    if mutate:
        mutate(config)
    return Plan(settings.validate_config(config))


@pytest.fixture(scope="module")
def quick():
    return plan_of()


def full(pattern):
    return re.compile(f"^(?:{pattern})$")


def test_every_id_matches_the_wildcard_of_the_paths_it_names(quick):
    model, attack = full(WILDCARD_PATTERNS["model"]), full(WILDCARD_PATTERNS["attack"])
    assert full(WILDCARD_PATTERNS["data"]).match(quick.data_id)
    for registry in (quick.trained, quick.defended):
        assert registry and all(model.match(m) for m in registry)
    assert all(attack.match(a) for a in [*quick.attacks, *quick.robustness])
    for key in ("targeted", "suppression", "ratios"):
        assert full(WILDCARD_PATTERNS[key]).match(quick.sns_id[key])
    assert full(WILDCARD_PATTERNS["sweep"]).match(quick.sweep_id)
    assert full(WILDCARD_PATTERNS["analysis"]).match(quick.ig_analysis_id)
    assert full(WILDCARD_PATTERNS["form"]).match(quick.sensitivity_form)


def test_registries_are_the_unions_they_are_documented_to_be(quick):
    assert quick.trained.keys() == {*quick.analysed, *quick.defense_models, *quick.layer_range_models}
    assert quick.evaluated.keys() == {*quick.analysed, *quick.defense_models, *quick.defended}
    assert not quick.analysed.keys() & quick.defense_models.keys()
    assert set(quick.ig_defended) < set(quick.defended)
    # every defended model wraps a trained one
    assert all(entry["base_id"] in quick.trained for entry in quick.defended.values())


def test_model_path_and_label_follow_the_registry(quick):
    ig = next(iter(quick.ig_defended))
    meansparse = next(m for m in quick.defended if m not in quick.ig_defended)
    trained = next(iter(quick.analysed))
    assert quick.model_path(ig) == f"results/{quick.data_id}/ig_defense/{ig}/model.pt"
    assert quick.model_path(meansparse) == f"results/{quick.data_id}/defended/{meansparse}/model.pt"
    assert quick.model_path(trained) == f"results/{quick.data_id}/models/{trained}/model.pt"
    assert quick.model_label(ig) == f"{quick.defended[ig]['arch']}-pat_igdefense"
    extra = next(iter(quick.layer_range_models))  # labelled although not in the final table
    assert quick.model_label(extra).endswith(quick.layer_range_models[extra]["training_name"])


def outputs_of(plan):
    """rule all's files, those of the run folder (another folder for every config) named relative to it."""
    return [f.replace(plan.run_dir, "<run>") for f in targets.final_outputs(plan)]


def test_targets_follow_the_stage_switches():
    on = outputs_of(plan_of())
    assert on[-1] == "<run>/report_landing.rst" and len(on) == len(set(on))
    off = outputs_of(plan_of(mutate=lambda c: c["psn"].update(enabled=False)))
    assert set(off) < set(on)
    assert all("/psn/" in f for f in set(on) - set(off))
    no_defenses = plan_of(mutate=lambda c: c["defenses"].update(final_table=False))
    assert targets.defenses(no_defenses) == [] and no_defenses.transfer_rows() == []
    assert "<run>/tables/final_robustness.md" in on


def test_training_inputs_name_base_and_static_models(quick):
    jobs = JobWiring(quick)
    for model_id, entry in quick.trained.items():
        files = jobs.training_inputs(SimpleNamespace(data=quick.data_id, model=model_id))
        method = entry["training"]["method"]
        assert ("base" in files) == (method == "sns"), model_id
        assert ("static" in files) == (method == "eat"), model_id
        for path in [files.get("base"), *files.get("static", [])]:
            if path is not None:
                assert path.split("/")[3] in quick.trained  # an upstream model the plan trains


def test_dataset_inputs_name_the_archive_record_only_for_cifar10(quick):
    assert JobWiring(quick).dataset_inputs(None) == {}
    cifar = plan_of("presets/cifar10_paper.yaml")
    assert JobWiring(cifar).dataset_inputs(None) == {"archive_record": cifar.cifar10_archive_record}


def test_sensitivity_form_wildcard_splits_into_formula_and_site(quick):
    jobs = JobWiring(quick)
    assert jobs.sensitivity_normalised(SimpleNamespace(form="tip_bn")) is True
    assert jobs.sensitivity_normalised(SimpleNamespace(form="eccv_relu")) is False
    assert jobs.sensitivity_site(SimpleNamespace(form="eccv_relu")) == "relu"


def test_final_table_models_in_architecture_order_with_declared_gaps(quick):
    rows = JobWiring(quick).final_table_models(None)
    assert [r["arch"] for r in rows.values()] == sorted((r["arch"] for r in rows.values()),
                                                        key=quick.archs.index)
    assert len(rows) == len(quick.evaluated)
    ig = [r for r in rows.values() if r["method"] == "ig_defense"]
    assert ig and all(r["not_run"] for r in ig)  # the quick preset leaves some attacks out for IG-Defense
    assert all(not r["not_run"] for r in rows.values() if r["method"] != "ig_defense")


def test_findings_inputs_are_the_files_findings_files_lists(quick):
    jobs = JobWiring(quick)
    labelled = jobs.findings_inputs(None)
    files = jobs.findings_files(None)
    assert set(labelled["importance"]) == {quick.model_label(m) for m in quick.analysed}
    assert quick.run_file("tables/defense_findings.json") in files
    assert len(files) == sum(len(g) for g in labelled.values())


def test_params_functions_add_the_run_seed(quick):
    jobs = JobWiring(quick)
    seed = quick.config["seed"]
    wc = SimpleNamespace(model=next(iter(quick.analysed)))
    for fn in (jobs.sweep_settings, jobs.targeted_settings, jobs.suppression_settings, jobs.ratio_settings,
               jobs.psn_score_settings, jobs.psn_deviation_settings, jobs.psn_attack_settings,
               jobs.psn_heatmap_settings, jobs.ig_analysis_settings):
        assert fn(wc)["seed"] == seed, fn.__name__


def test_the_workflow_wiring_imports_no_torch():
    code = ("import sys, advneurons.workflow.plan, advneurons.workflow.wiring, advneurons.workflow.targets, "
            "advneurons.workflow.fingerprints; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("preset", ["config.yaml", "presets/cifar10_rehearsal.yaml"])
def test_parsing_the_workflow_imports_no_torch(tmp_path, preset):
    """Snakemake parses the workflow for every dry run, every run and, on a cluster, every job: importing torch
    there (2-3 s on these machines) would cost each of them before any work starts."""
    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    argv = ["snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--cores", "1",
            "--configfile", str(ROOT / preset), "--dry-run", "--quiet", "rules", "all"]
    code = ("import sys\nfrom snakemake.cli import main\n"
            f"sys.argv = {argv!r}\n"
            "try:\n    main()\nexcept SystemExit as stop:\n    print('EXIT', stop.code)\n"
            "print('TORCH', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "EXIT 0" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    assert "TORCH False" in out.stdout
