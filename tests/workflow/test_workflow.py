"""The whole DAG on the tiny config, through the real snakemake command line."""

import json

import numpy as np
import pandas as pd
import pytest

from advneurons.evaluation.pairs import open_pairs
from workflow_helpers import run_folder, snakemake


def test_every_stage_produced_its_outputs(tiny_run):
    results = tiny_run / "results"
    (data_dir,) = [p for p in results.iterdir() if p.name.startswith("digits~")]
    models = sorted(p.name.split("~")[0] for p in (data_dir / "models").iterdir())
    # every training of both architectures, and the layer-range sweep's extra fine-tuning of each
    expected = [f"{a}-{t}" for a in ("resnet18", "vgg16") for t in ("alp", "eat", "nat", "pat", "sns_sen", "vanilla")]
    expected += ["resnet18-sns_sen_from_l4b2c1", "vgg16-sns_sen_from_conv13", "small-external", "small-sns_sen"]
    assert models == sorted(expected)
    for model_dir in (data_dir / "models").iterdir():
        if "-external~" in model_dir.name:  # imported, not trained (test_external_model_through_every_stage)
            continue
        metrics = pd.read_csv(model_dir / "metrics.csv")
        assert metrics.epoch.tolist() == [1]
        meta = json.loads((model_dir / "metadata.json").read_text())
        assert meta["seed"] == 0 and "torch" in meta["versions"]
        assert not (model_dir / "resume.pt").exists()
    pair_files = sorted((data_dir / "pairs").glob("*/*/pairs.npz"))
    # fgsm and pgd for the analysed models, pgd (sensitivity) for defenses and the external model
    assert len(pair_files) == 4 * 2 + 8 + 1
    for path in pair_files:
        pairs = open_pairs(path)
        assert len(pairs) == 24 and pairs.perturbed.min() >= 0 and pairs.perturbed.max() <= 1
        assert np.abs(pairs.perturbed - pairs.clean).max() <= 32 / 255 + 1e-6


def test_sensitivity_outputs_cover_every_layer(tiny_run):
    (data_dir,) = [p for p in (tiny_run / "results").iterdir() if p.name.startswith("digits~")]
    tables = sorted((data_dir / "sensitivity").glob("*/pgd~*/sensitivity_tip_bn.csv"))
    assert len(tables) == 4 + 8 + 1  # the defense models' feed the sensitivity-by-training figure
    tables = [t for t in tables if t.with_name("top10pct_tip_bn.csv").exists()]
    assert len(tables) == 4 + 1
    for table_path in tables:
        table = pd.read_csv(table_path)
        if "vgg16" in str(table_path):
            assert table.layer.unique().tolist() == [f"conv{i}" for i in range(1, 14)] + ["fc"]
        elif "resnet18" in str(table_path):
            assert {"conv1", "l1b1c1", "l4b2c2", "fc"} <= set(table.layer)
        else:  # the external model: its own module names, in forward order, its logit layer as "fc"
            assert table.layer.unique().tolist() == ["stem.0", "block_a", "block_b", "plain", "fc"]
        assert (table.sensitivity >= 0).all() and table.sensitivity.max() > 0
        top10 = pd.read_csv(table_path.with_name("top10pct_tip_bn.csv"))
        top50 = pd.read_csv(table_path.with_name("top50pct_tip_bn.csv"))
        assert len(top50) > len(top10) >= table.layer.nunique()
        first = table[table.layer == "fc"].sensitivity.max()
        assert top10[top10.layer == "fc"].sensitivity.iloc[0] == pytest.approx(first)


def test_robustness_tables_have_the_papers_columns_and_trace_every_cell(tiny_run):
    tables = run_folder(tiny_run) / "tables"
    table = pd.read_csv(tables / "robustness.csv")
    assert sorted(table.model) == ["resnet18-pat", "resnet18-vanilla", "small-external", "vgg16-pat", "vgg16-vanilla"]
    assert list(table.columns) == ["model", "Clean", "C&W", "L2 PGD", "L-inf PGD", "FGSM", "SPSA", "Step-LL", "MI-FGSM",
                                   "Worst case"]
    assert ((table.drop(columns="model") >= 0) & (table.drop(columns="model") <= 100)).all().all()
    settings = pd.read_csv(tables / "robustness_settings.csv")
    assert len(settings) == 5 * 9  # every cell but the model names
    spsa = settings[settings.column == "SPSA"]
    assert set(spsa.n_images) == {8} and set(settings[settings.column == "FGSM"].n_images) == {24}
    assert set(settings[settings.column == "L-inf PGD"].eps_255) == {32}
    table_i = pd.read_csv(tables / "robustness_table_i.csv")
    assert list(table_i.columns) == ["model", "Clean", "PGD eps=32/255", "Gaussian s=1", "Gaussian s=5", "Worst case"]
    # One evaluation job per model and attack, reused by both tables (pgd appears in both).
    (data_dir,) = [p for p in (tiny_run / "results").iterdir() if p.name.startswith("digits~")]
    # analysed models x 9, defenses and MeanSparse x the 7 of table_iii, IG-Defense x its 2 (ig_defense.attacks),
    # the two extra layer-range models x pgd, the external model x 9, its MeanSparse x 7 and IG-Defense x 2
    records = list((data_dir / "robustness").glob("*/*.csv"))
    assert len(records) == 4 * 9 + 8 * 7 + 2 * 7 + 2 * 2 + 2 + 9 + 7 + 2 + 7  # ... and its SNS fine-tuning x 7
    assert all(p.with_name(f"{p.stem}.images.csv.gz").exists() and p.with_suffix(".json").exists() for p in records)
    assert "vgg16-pat" in (tables / "robustness.md").read_text()


def test_pgd_sweeps_cover_steps_and_eps(tiny_run):
    sweep = pd.read_csv(run_folder(tiny_run) / "tables" / "pgd_sweep.csv")
    assert set(sweep.model) == {"resnet18-pat", "resnet18-vanilla", "vgg16-pat", "vgg16-vanilla", "small-external"}
    assert sorted(sweep[sweep.sweep == "steps"].steps.unique()) == [1, 2]
    assert sorted(sweep[sweep.sweep == "eps"].eps_255.unique()) == [16, 32]
    for name in ("pgd_sweep_steps.png", "pgd_sweep_eps.png"):
        assert (run_folder(tiny_run) / "figures" / name).read_bytes()[:4] == b"\x89PNG"


def test_sns_analyses_and_findings(tiny_run):
    (data_dir,) = [p for p in (tiny_run / "results").iterdir() if p.name.startswith("digits~")]
    sns = data_dir / "sns"
    importance = sorted(sns.glob("*/targeted~*/importance_k5.csv"))
    assert len(importance) == 4 + 1  # the external model's too
    for path in importance:
        table = pd.read_csv(path)
        assert {"spearman", "levenshtein_similarity", "jaccard"} <= set(table.columns)
        assert table.spearman.between(-1, 1).all() and table.levenshtein_similarity.between(0, 1).all()
    assert len(list(sns.glob("*/targeted~*/layer_similarity_top10pct.csv"))) == 4 + 1
    # suppression on the vanilla models and the external one (suppression: true); ratio reports and Fig 10 curves
    # per architecture
    assert sorted(p.parent.parent.name.split("~")[0] for p in sns.glob("*/pgd~*-tip_bn/suppression~*_summary.csv")) == [
        "resnet18-vanilla", "small-external", "vgg16-vanilla"]
    for arch in ("vgg16", "resnet18"):
        assert len(list((sns / arch).glob("pgd~*-tip_bn/ratios~*_table_ii.csv"))) == 1
        assert len(list((sns / arch).glob("pgd~*/sensitivity_curves_tip_bn.png"))) == 1
    findings = (run_folder(tiny_run) / "findings.md").read_text()
    assert "Claims supported by this run" in findings and "vgg16" in findings and "resnet18" in findings
    assert "small-external" in findings  # its per-model SNS sections


def test_psn_scores_and_analyses_on_the_vanilla_models(tiny_run):
    from advneurons.models.layer_names import PSN_LAYERS

    (data_dir,) = [p for p in (tiny_run / "results").iterdir() if p.name.startswith("digits~")]
    score_dirs = sorted((data_dir / "psn").glob("*/psn~*"))
    # the external model's PSN: test_external_model_through_every_stage_that_applies
    score_dirs = [d for d in score_dirs if "-external~" not in d.parent.name]
    assert [d.parent.name.split("~")[0] for d in score_dirs] == ["resnet18-vanilla", "vgg16-vanilla"]
    for d in score_dirs:
        arch = d.parent.name.split("-")[0]
        scores = pd.read_csv(d / "scores.csv.gz")
        assert list(dict.fromkeys(scores.layer)) == PSN_LAYERS["all"][arch]  # the tiny config scores every node
        assert scores.score.gt(0).all() and scores.before.ge(0).all() and scores.after.ge(0).all()
        # every unit before a ReLU is reached by the input; ReLU outputs (and their pooling) of units inactive
        # over the whole ball have no coefficient at all
        assert scores[scores.kind.isin(["conv", "bn", "add", "linear"])].before.gt(0).all()
        meta = json.loads((d / "scores.json").read_text())
        assert meta["params"]["bound_method"] == "CROWN" and len(meta["image_indices"]) == 1
        top = pd.read_csv(d / "top1-10pct.csv.gz")
        assert sorted(top.percent.unique()) == [1, 10]
        per_layer = top[top.percent == 10].groupby("layer").size()
        units = scores.groupby("layer").size()
        assert (per_layer == (units[per_layer.index] // 10).clip(lower=1)).all()  # max(1, floor(10% of the units))
        (deviation,) = d.glob("deviation~*_layers.csv")
        dev = pd.read_csv(deviation)
        assert set(dev.group) == {"psn", "random"} and set(dev.perturbation) == {"noise", "pgd"}
        assert set(dev.layer) == set(PSN_LAYERS["all"][arch])
        (attack,) = d.glob("noise~*.csv")
        att = pd.read_csv(attack)
        assert sorted(att.ratio_percent.unique()) == [5, 30] and set(att.group) == {"psn", "random"}
        (heatmap,) = d.glob("heatmaps~*/*.png")
        assert heatmap.stem == {"vgg16": "conv13.relu", "resnet18": "l4b2add"}[arch]
        assert heatmap.read_bytes()[:4] == b"\x89PNG"
        (agreement,) = d.glob("agreement_pgd~*-tip_bn_top10pct.csv")
        agree = pd.read_csv(agreement)
        # every node that belongs to a conv layer (not pooling, flatten) against that conv's sensitivity
        assert agree.jaccard.between(0, 1).all() and set(agree.layer) == set(scores[scores.conv.notna()].layer)


def test_defenses_trained_and_compared_with_every_model(tiny_run):
    (data_dir,) = [p for p in (tiny_run / "results").iterdir() if p.name.startswith("digits~")]
    (sns_dir,) = list((data_dir / "models").glob("vgg16-sns_sen~*"))
    meta = json.loads((sns_dir / "metadata.json").read_text())
    (base_dir,) = list((data_dir / "models").glob("vgg16-vanilla~*"))
    assert meta["base"]["path"].endswith(f"{base_dir.name}/model.pt") and meta["sns_lambda"] == 5.0
    assert set(meta["stabilised_channels"]) == {f"conv{i}" for i in range(8, 14)}
    assert "train_sns_loss" in pd.read_csv(sns_dir / "metrics.csv").columns
    tables = run_folder(tiny_run) / "tables"
    final = pd.read_csv(tables / "final_robustness.csv")
    assert list(final.columns[:4]) == ["arch", "model", "training", "method"]
    assert list(final.columns[4:]) == ["Clean", "C&W", "L2 PGD", "L-inf PGD", "FGSM", "SPSA", "Step-LL", "MI-FGSM",
                                       "Worst case"]
    assert list(final.arch.unique()) == ["vgg16", "resnet18", "small"] and len(final) == 16 + 4
    assert set(final.method) == {"vanilla", "pat", "alp", "nat", "eat", "sns", "meansparse", "ig_defense", "external"}
    # IG-Defense runs the attacks of ig_defense.attacks (pgd, fgsm) adaptively; the other cells stay empty
    ig = final[final.method == "ig_defense"]
    assert ig[["Clean", "L-inf PGD", "FGSM"]].notna().all().all() and ig[["C&W", "L2 PGD", "SPSA", "Step-LL", "MI-FGSM"]].isna().all().all()
    settings = pd.read_csv(tables / "final_robustness_settings.csv")
    ig_cells = settings[settings.model.isin(ig.model) & (settings.column != "Clean")]
    ig_cells = ig_cells[ig_cells.column != "Worst case"]
    assert len(ig_cells) == 6 and ig_cells.description.str.contains("EOT over 2 noise draws").all()
    final_md = (tables / "final_robustness.md").read_text()
    assert "—" in final_md and "adaptively" in final_md
    # exact intervals and n in every header; the partial-suite rows' worst case is marked and not ranked
    assert "±" not in final_md and "‡" in final_md and "L-inf PGD (n=" in final_md and "Worst case (n=" in final_md
    assert final.loc[final.method == "ig_defense", "Worst case"].isna().all()
    worst = settings[settings.column == "Worst case"]
    assert worst[worst.model.isin(ig.model)].partial_suite.all() and worst[~worst.partial_suite].n_images.nunique() == 1
    for d in (data_dir / "ig_defense").iterdir():  # LO-IR ranking, mask, analysis of the four channel groups
        ranking = pd.read_csv(d / "lo_ir_ranking.csv")
        channels = ranking.channel.nunique()
        assert len(ranking) == 10 * channels and (ranking.groupby("class").in_mask.sum() == -(-channels // 10)).all()
        (summary,) = d.glob("analysis~*_summary.csv")
        assert pd.read_csv(summary).group.tolist() == ["true-class top-k", "adversarial-class top-k",
                                                        "other classes' top-k", "in no top-k"]
        assert list(d.glob("analysis~*.png"))
    # transfer check: each defended model on its PAT base model's PGD examples, beside both white-box cells
    transfer = pd.read_csv(tables / "transfer_check.csv").set_index("model")
    assert set(transfer.index) == set(final[final.method.isin(["meansparse", "ig_defense"])].model)
    assert (transfer.base == transfer.index.str.replace(r"_(meansparse|igdefense)$", "", regex=True)).all()
    cells = final.set_index("model")["L-inf PGD"]
    for model, checked in transfer.iterrows():
        assert 100 * checked.defended_whitebox == pytest.approx(cells[model], abs=0.01)  # the table's cell
        assert checked.upper_bound == min(checked.defended_whitebox, checked.defended_transfer)
    findings = (run_folder(tiny_run) / "findings.md").read_text()
    assert "survives the adversarial examples transferred" in findings
    # every verdict with the rule that decided it; the defense rule, stated once, names the masking case
    assert "  - rule: " in findings and "gradient masking likely" in findings
    (eat_dir,) = list((data_dir / "models").glob("vgg16-eat~*"))  # static sources: both vanilla models
    eat_meta = json.loads((eat_dir / "metadata.json").read_text())
    assert sorted(m["arch"] for m in eat_meta["static_models"]) == ["resnet18", "vgg16"]
    for d in (data_dir / "defended").iterdir():  # MeanSparse on the PAT models, alpha chosen on validation
        sweep = pd.read_csv(d / "alpha_sweep.csv")
        assert sorted(sweep.alpha) == [0, 1] and sweep.chosen.sum() == 1
        assert json.loads((d / "metadata.json").read_text())["split_used_for_alpha"] == "val"
    # the analysed models' cells are the robustness table's (same evaluation jobs)
    robustness = pd.read_csv(tables / "robustness.csv").set_index("model")
    for row in final[final.training.isin(["vanilla", "pat"])].itertuples():
        assert row.Clean == robustness.loc[row.model, "Clean"]
    assert (tables / "final_robustness.tex").read_text().count(r"\\") >= 17
    for arch in ("vgg16", "resnet18"):
        fig = pd.read_csv(run_folder(tiny_run) / "figures" / f"sensitivity_by_training_{arch}.csv")
        assert set(fig.training) == {"vanilla", "pat", "alp", "nat", "eat", "sns_sen"}


def test_every_job_left_a_log_and_a_benchmark(tiny_run):
    logs = list((tiny_run / "logs").rglob("*.log"))
    benchmarks = list((tiny_run / "benchmarks").rglob("*.tsv"))
    # every job of the tiny DAG except `all` (see test_reruns.EVERYTHING)
    from test_reruns import EVERYTHING

    assert len(logs) == len(benchmarks) == sum(EVERYTHING.values()) - 1


def test_nothing_left_to_do_after_a_run(tiny_run):
    proc = snakemake(tiny_run, "-n", "all")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_html_report_holds_every_table_with_its_caption(tiny_run):
    proc = snakemake(tiny_run, "--report", "report.html")
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (tiny_run / "report.html").read_text()
    # it opens on this run's landing page: what ran, the headline table, the verdicts, links to the tables
    assert "Neuron-level adversarial vulnerability: this run" in html and "Main result: robustness" in html
    assert "Verdicts by section" in html and "showResultInfo" in html
    # every caption and the landing page render: no reStructuredText error anywhere
    assert "system-message" not in html and "System Message" not in html
    # tables are HTML pages (shown inline), every Markdown table of the run has one
    assert "robustness.html" in html and "Accuracy (%) of every model on the digits test split" in html
    assert "robustness_settings.html" in html and "pgd_sweep_steps.png" in html and "pgd_sweep_eps.png" in html
    assert "findings.html" in html and "sensitivity_curves_tip_bn.png" in html
    for md in (tiny_run / "results").rglob("*.md"):
        page = md.with_suffix(".html")
        assert page.exists() and "<table>" in page.read_text() or md.name == "findings.md", md
        assert md.with_suffix(".html").name in html, md
    assert html.count("sensitivity_tip_bn.csv") >= 4 and "divided by the map size (TIP Eq 1)" in html
    assert "top10pct_tip_bn.csv" in html and "top50pct_tip_bn.csv" in html
    assert "top1-10pct.csv.gz" in html and "propagation-sensitive units" in html
    assert "final_robustness.html" in html and "sensitivity_by_training_vgg16.png" in html
    assert "IG-Defense analysis" in html and "relative change (adversarial vs clean)" in html
    assert "Attacking PSNs" in html and "Focus regions" in html and "PSN vs neuron sensitivity" in html


def test_layer_range_sweep_and_paired_claims(tiny_run):
    tables = run_folder(tiny_run) / "tables"
    sweep = pd.read_csv(tables / "sns_layer_range.csv")
    assert set(zip(sweep.arch, sweep.first_layer)) == {("vgg16", "conv8"), ("vgg16", "conv13"),
                                                      ("resnet18", "l3b2c1"), ("resnet18", "l4b2c1")}
    assert set(sweep.column) == {"Clean", "L-inf PGD"} and (sweep.ci_low_pct <= sweep.accuracy_pct).all()
    # the papers' range is the SNS-sen model itself: its cell equals the final table's
    final = pd.read_csv(tables / "final_robustness.csv").set_index("model")
    own = sweep[(sweep.first_layer == "conv8") & (sweep.column == "L-inf PGD")].iloc[0]
    assert own.model == "vgg16-sns_sen" and own.accuracy_pct == pytest.approx(final.loc["vgg16-sns_sen", "L-inf PGD"], abs=0.01)
    assert (run_folder(tiny_run) / "figures" / "sns_layer_range.png").stat().st_size > 0
    # every evaluation stores its per-image results; the defense claims are decided on them
    data_dir = next((tiny_run / "results").glob("digits~*"))
    for records_csv in (data_dir / "robustness").rglob("*.csv"):
        records = pd.read_csv(records_csv)
        for row in records.itertuples():
            assert len(row.correct_by_image) == row.n_images
            assert row.correct_by_image.count("y") == pytest.approx(row.accuracy * row.n_images)
    findings = (run_folder(tiny_run) / "findings.md").read_text()
    assert "SNS-sen beats PAT" in findings and "exact McNemar" in findings
    assert "**yes**" not in findings and "**no**" not in findings


# ------------------------------------------------------------------------------ steps run by hand
def run_by_hand(workdir, script, *args):
    """`python workflow_scripts/<script>.py ARGS` in `workdir`, as a user would run one step outside Snakemake."""
    import os
    import subprocess
    import sys

    from workflow_helpers import ROOT, SUPPORT

    # the tiny config names an external model: its factory's module is importable, as a user's package would be
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(ROOT / "workflow_scripts" / f"{script}.py"), *args], cwd=workdir,
                          capture_output=True, text=True, timeout=600, env=env)


def test_a_step_run_by_hand_makes_the_same_file_as_snakemake(tiny_run, tmp_path):
    import shutil

    made = sorted(tiny_run.glob("results/*/sensitivity/*-vanilla~*/*/top10pct_*.csv"))[0]
    target = made.relative_to(tiny_run)
    source = target.with_name(target.name.replace("top10pct_", "sensitivity_"))
    (tmp_path / source).parent.mkdir(parents=True)
    shutil.copy(tiny_run / source, tmp_path / source)  # only the step's input: nothing upstream runs
    shutil.copy(tiny_run / "config.yaml", tmp_path / "config.yaml")
    shutil.copytree(tiny_run / "external", tmp_path / "external")  # the config's external model's weights
    proc = run_by_hand(tmp_path, "sensitive_channels", str(target))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / target).read_bytes() == made.read_bytes()
    assert list((tmp_path / "logs").rglob("*.log")), "the step's log file is written where Snakemake puts it"


def test_a_step_run_by_hand_names_what_is_wrong(tiny_run, tmp_path):
    import shutil

    shutil.copy(tiny_run / "config.yaml", tmp_path / "config.yaml")
    shutil.copytree(tiny_run / "external", tmp_path / "external")
    made = sorted(tiny_run.glob("results/*/sensitivity/*-vanilla~*/*/top10pct_*.csv"))[0].relative_to(tiny_run)
    proc = run_by_hand(tmp_path, "sensitive_channels", "results/not/a/file.csv")
    assert proc.returncode != 0 and "is not an output of sensitive_channels.py" in proc.stderr
    proc = run_by_hand(tmp_path, "sensitive_channels", str(made))  # its sensitivity file is not here
    assert proc.returncode != 0 and "are missing" in proc.stderr and "make them first with `snakemake" in proc.stderr


def test_external_model_through_every_stage_that_applies(tiny_run):
    """The tiny run's external model (tests/support/external_factory.py, weights trained outside the pipeline):
    imported, evaluated under both tables' attacks with per-image records, measured for sensitivity, defended by
    MeanSparse (which names the ReLU it could not reach) and IG-Defense, and traced in results_long.csv."""
    (data_dir,) = [p for p in (tiny_run / "results").iterdir() if p.name.startswith("digits~")]
    (model_dir,) = list((data_dir / "models").glob("small-external~*"))
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["shared_relus"] == ["shared"] and meta["params"]["weights"] == "external/small.pt"
    tables = run_folder(tiny_run) / "tables"
    table = pd.read_csv(tables / "robustness.csv").set_index("model")
    assert table.loc["small-external", "Clean"] > 50  # its own training reached ~70-80% on the test split
    # the worst case is taken on the images every attack saw: SPSA's 8 (the smallest seeded subset)
    assert table.loc["small-external", "Worst case"] <= table.loc["small-external", "SPSA"]
    # per-image records: equal to the table's cells
    records = list((data_dir / "robustness" / model_dir.name).glob("*.csv"))
    for path in records:
        images = pd.read_csv(path.with_name(f"{path.stem}.images.csv.gz"))
        record = pd.read_csv(path)
        for rec in record.itertuples():
            part = images[images.attack == rec.attack]
            assert len(part) == rec.n_images and part.correct.mean() == pytest.approx(rec.accuracy)
            if rec.attack_type == "spsa":
                assert (part.queries >= 1).all()  # black-box: queries counted per image
    # defended: MeanSparse says which ReLU it could not reach; both defenses are rows of the final table
    final = pd.read_csv(tables / "final_robustness.csv").set_index("model")
    assert {"small-external", "small-external_meansparse", "small-external_igdefense", "small-sns_sen"} <= set(
        final.index)
    (sns_dir,) = list((data_dir / "models").glob("small-sns_sen~*"))  # SNS-sen fine-tuned from it
    sns_meta = json.loads((sns_dir / "metadata.json").read_text())
    assert sns_meta["base"]["path"].endswith(f"{model_dir.name}/model.pt")
    assert sns_meta["sns_layers"] == ["block_b", "plain"]
    (ms_dir,) = [d for d in (data_dir / "defended").iterdir() if d.name.startswith("small-")]
    ms_meta = json.loads((ms_dir / "metadata.json").read_text())
    assert ms_meta["relus_defended"] == ["stem.2"] and ms_meta["relus_not_reached"] == ["shared"]
    # lineage: every cell of the tables names its checkpoint, code fingerprint, seed, device and log
    settings = pd.read_csv(tables / "robustness_settings.csv")
    cells = settings[(settings.model == "small-external") & (settings.column != "Worst case")]
    from advneurons.models.checkpoint import file_digest

    assert set(cells.checkpoint_sha256) == {file_digest(model_dir / "model.pt")}
    assert cells.code.str.len().min() > 8 and (cells.device == "cpu").all() and (cells.seed == 0).all()
    assert all((tiny_run / log).exists() for log in cells.log)
    # the long table: every accuracy of the run, this model's included, with its interval
    long = pd.read_csv(tables / "results_long.csv")
    own = long[long.model == "small-external"]
    assert set(own.defense) == {"external"} and len(own[own.attack != "clean"]) == 9
    assert ((own.ci_low_pct <= own.accuracy_pct) & (own.accuracy_pct <= own.ci_high_pct)).all()
    assert set(long.model) >= set(final.index[final.training.notna()])
    # one clean row per subset of images, each saying whose images it counts
    clean = own[own.attack == "clean"]
    assert clean.subset.is_unique and len(clean) >= 2 and clean.subset.str.fullmatch(r"all|seeded \d+").all()
    # PSN (relu_inputs: the probe's ReLU inputs, functional and shared ReLUs included) and its analyses
    (psn_dir,) = list((data_dir / "psn" / model_dir.name).glob("psn~*"))
    scores = pd.read_csv(psn_dir / "scores.csv.gz")
    assert list(dict.fromkeys(scores.layer)) == ["stem.1", "norm_a", "norm_b", "plain"]
    assert np.isfinite(scores.score).all() and (scores.score > 0).all()
    assert list(psn_dir.glob("heatmaps~*/norm_b.png")) and list(psn_dir.glob("deviation~*_blocks.csv"))
    agreement = pd.read_csv(next(psn_dir.glob("agreement_*.csv")))
    assert list(agreement.conv) == ["stem.0", "block_a", "block_b", "plain"]  # compared with its own sensitivity
    # the suppression study: every conv layer scaled where a ReLU reads it (module, shared or functional)
    (sup_meta,) = [p for p in (data_dir / "sns" / model_dir.name).glob("*/suppression~*.json")]
    suppressed = json.loads(sup_meta.read_text())
    assert set(suppressed["suppressed_channels"]) == {"stem.2", "norm_a", "norm_b", "plain"}
    assert suppressed["layers_not_suppressed"] == []
