"""Targeted sets and the chain of SNS analysis steps on a tiny trained model; paper claims and findings.md."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from advneurons.report.findings import Claim, Section, read_sections_json, render_findings, write_findings, write_sections_json
from advneurons.attacks import AttackSpec
from advneurons.sns.findings import (
    claims_layer_similarity,
    claims_pat_sensitivity,
    claims_ratios,
    claims_suppression,
    sns_findings,
)
from advneurons.sns.importance import targeted_neurons, targeted_pairs
from advneurons.sns.similarity import importance_report, layer_similarity
from advneurons.sns.common import PENULTIMATE, resolve_attack, strength_label
from advneurons.sns.importance import open_targeted_pairs, compute_targeted_pairs


# ------------------------------------------------------------------------------------------ targeted sets
def test_targeted_pairs_keep_only_successes_within_budget(trained_vgg, digits_files):
    from advneurons.data import load_split

    x, y = load_split(digits_files["test"])
    eps = 32 / 255
    pairs, target, counts = compute_targeted_pairs(trained_vgg, x, y, eps, steps=5, n_per_class=6, seed=0, num_classes=10)
    assert counts["attempted"].tolist() == [6] * 10
    assert counts["successful"].sum() == len(pairs) == len(target) and len(pairs) > 0
    assert np.all(pairs.label != target)  # D^y: images whose label is not the target
    assert np.all(pairs.perturbed_pred == target)  # only successful targeted examples are kept
    assert np.abs(pairs.perturbed - pairs.clean).max() <= eps + 1e-6
    np.testing.assert_array_equal(pairs.clean, x[pairs.index].numpy())
    with torch.no_grad():
        assert (trained_vgg(torch.from_numpy(pairs.perturbed)).argmax(1).numpy() == target).all()
    again, target2, _ = compute_targeted_pairs(trained_vgg, x, y, eps, steps=5, n_per_class=6, seed=0, num_classes=10)
    np.testing.assert_array_equal(again.perturbed, pairs.perturbed)
    np.testing.assert_array_equal(target2, target)


def test_resolve_attack_forms():
    spec = resolve_attack({"type": "fgsm", "eps": 8})
    assert spec.description == "FGSM eps=8/255"

    def identity(model, x, y, generator):
        return x

    assert resolve_attack(identity).description == "identity"
    # Column labels in config units, whatever form the attack came in.
    assert strength_label({"type": "pgd", "eps": 8, "steps": 10}, 1) == "eps=8"
    assert strength_label({"type": "gaussian", "severity": 2, "sigma": None}, 1) == "severity=2"
    assert strength_label(AttackSpec.from_config({"type": "pgd", "eps": 8}), 1) == "eps=8"
    assert strength_label(identity, 3) == "level 3"
    with pytest.raises(TypeError, match="cannot use"):
        resolve_attack(42)


def test_analysis_chain_on_trained_model(trained_vgg_path, digits_files, tmp_path):
    pgd = {"type": "pgd", "eps": 32, "steps": 5}
    targeted_pairs(trained_vgg_path, digits_files["test"], pgd, 5, 0, 64, tmp_path / "tp.npz", tmp_path / "tp.json")
    pairs, target = open_targeted_pairs(tmp_path / "tp.npz")
    meta = json.loads((tmp_path / "tp.json").read_text())
    assert meta["n_pairs"] == len(pairs) and sum(c["successful"] for c in meta["per_class"]) == len(pairs)
    with pytest.raises(ValueError, match="L-inf PGD"):
        targeted_pairs(
            trained_vgg_path,
            digits_files["test"],
            {"type": "fgsm", "eps": 8},
            5,
            0,
            64,
            tmp_path / "x.npz",
            tmp_path / "x.json",
        )

    sens, imp = targeted_neurons(
        trained_vgg_path, tmp_path / "tp.npz", 8, 64, tmp_path / "ts.csv", tmp_path / "ti.csv", tmp_path / "tn.json"
    )
    classes = sorted(set(target.tolist()))
    assert sorted(imp["target"].unique()) == classes
    # Every adversarial image casts k + (k-1) + ... + 1 votes.
    per_target = imp.groupby("target")["votes"].sum()
    counts = pd.Series(target).value_counts().sort_index()
    np.testing.assert_array_equal(per_target.to_numpy(), counts.to_numpy() * (8 * 9 // 2))

    per_class = importance_report(
        tmp_path / "ts.csv",
        tmp_path / "ti.csv",
        8,
        tmp_path / "imp.csv",
        tmp_path / "imp.md",
        tmp_path / "imps.csv",
        tmp_path / "imp.png",
        tmp_path / "imp.json",
    )
    assert per_class["target"].tolist() == classes
    assert per_class["gamma"].str.split().map(len).eq(8).all()
    assert "0.428" in (tmp_path / "imp.md").read_text() and (tmp_path / "imp.png").exists()

    layers = layer_similarity(
        tmp_path / "ts.csv", 10, tmp_path / "ls.csv", tmp_path / "ls.md", tmp_path / "ls.png", tmp_path / "ls.json"
    )
    assert layers["layer"].tolist() == [f"conv{i}" for i in range(1, 14)] + [PENULTIMATE]
    assert layers["n_targets"].eq(len(classes)).all()
    assert ((layers["total_jaccard"] >= 0) & (layers["total_jaccard"] <= layers["avg_pair_jaccard"] + 1e-12)).all()

    text = sns_findings(
        tmp_path / "findings.md",
        tmp_path / "findings.json",
        importance={"tiny": tmp_path / "imp.csv"},
        importance_summaries={"tiny": tmp_path / "imps.csv"},
        layer_similarity={"tiny": tmp_path / "ls.csv"},
        targeted_sensitivity={"tiny": tmp_path / "ts.csv"},
    )
    assert "## Sensitive vs important neurons — tiny" in text
    assert "final linear layer" in text
    assert len(read_sections_json(tmp_path / "findings.json")) == 2


# ------------------------------------------------------------------------------------------------ claims
def test_findings_render_and_extension(tmp_path):
    sections = [
        Section("A", [Claim("x holds", True, "3 of 3", "TIP Fig 1"), Claim("y holds", False, "1 of 3")]),
        Section("B", [Claim("z holds", None, "no data")], note="a note"),
    ]
    text = render_findings(sections, title="Findings")
    assert ("Claims supported by this run: 1 of the papers' 3 claims (supported 1; partly 0; gain under white-box "
            "attack only: gradient masking likely 0; contradicted 1; within noise 0; not checked 1)") in text
    assert "How verdicts are decided" in text and "Holm-Bonferroni" in text  # the general rules, at the top
    assert "- **supported** — x holds (TIP Fig 1). 3 of 3" in text and "- **contradicted** — y holds" in text and "- **not checked** — z holds. no data" in text
    write_sections_json([Section("Defenses", [Claim("d holds", True, "ok")])], tmp_path / "extra.json")
    full = write_findings(sections, tmp_path / "f.md", tmp_path / "f.json", extra_sections=[tmp_path / "extra.json"])
    assert full.index("## Defenses") > full.index("## B") and (tmp_path / "f.md").read_text() == full
    assert [s.title for s in read_sections_json(tmp_path / "f.json")] == ["A", "B", "Defenses"]
    with pytest.raises(ValueError, match="'supported' must be"):
        Claim.from_dict({"text": "t", "supported": "yes"})
    with pytest.raises(ValueError, match="outcome must be one of"):
        Claim("t", None, "", outcome="maybe")
    noisy = Claim("w holds", None, "2 vs 1 discordant", outcome="within noise")
    assert Claim.from_dict(noisy.to_dict()).verdict == "within noise"


def test_findings_state_each_rule_and_count_extensions_apart(tmp_path):
    from advneurons.report.findings import MASKING, VERDICTS, verdict_counts

    assert {"partly", MASKING} <= set(VERDICTS)
    sections = [Section("A", [
        Claim("x holds", None, "4 of 6 layers", "TIP Fig 1", "partly", rule="Holm over the 6 layers"),
        Claim("d raises robustness", None, "white-box only", "MeanSparse", MASKING, rule="the defense rule"),
        Claim("x holds on an external model", True, "6 of 6", rule="Holm", extension=True),
    ])]
    text = render_findings(sections)
    assert "- **partly** — x holds (TIP Fig 1). 4 of 6 layers\n  - rule: Holm over the 6 layers" in text
    assert f"- **{MASKING}** — d raises robustness" in text
    assert "- **supported** *(extension)* — x holds on an external model" in text
    # the extension is counted apart: the papers' own claims have no supported one
    assert "Claims supported by this run: 0 of the papers' 2 claims" in text
    assert "Extensions (the same claims on models the papers do not discuss), counted apart: supported 1;" in text
    assert verdict_counts(sections)["supported"] == 0 and verdict_counts(sections, extension=True)["supported"] == 1
    write_sections_json(sections, tmp_path / "s.json")
    back = read_sections_json(tmp_path / "s.json")[0].claims
    assert [c.rule for c in back] == [c.rule for c in sections[0].claims] and back[2].extension
    assert back[1].verdict == MASKING and back[1].supported is None


def _suppression_summary(cells, n_images):
    """Summary rows as suppression_summary writes them, per-image results nested (the first images correct):
    the random selection's three repeats all give the same images right."""
    rows = []
    for beta, clean_s, clean_r, pgd_s, pgd_r in cells:
        rows += [("clean", "sensitive", beta, clean_s, 1), ("clean", "random", beta, clean_r, 3),
                 ("pgd", "sensitive", beta, pgd_s, 1), ("pgd", "random", beta, pgd_r, 3)]
    summary = pd.DataFrame(rows, columns=["perturbation", "selection", "beta", "accuracy_pct", "n_repeats"])
    summary["n_images"] = n_images
    summary["correct_count_by_image"] = [
        ",".join(str(r if i < round(a / 100 * n_images) else 0) for i in range(n_images))
        for a, r in zip(summary.accuracy_pct, summary.n_repeats)]
    return summary


def test_claims_suppression_test_the_images_with_repeats_averaged():
    cells = ((1.0, 99, 99, 10, 10), (0.95, 98, 98, 25, 12), (0.7, 30, 95, 1, 5))
    claims = claims_suppression(_suppression_summary(cells, 1000))
    assert [c.verdict for c in claims] == ["supported", "supported", "supported"]
    assert "sensitive 30.0% vs random 95.0%" in claims[0].evidence and "sign test" in claims[0].evidence
    assert "of 1000 images" in claims[0].evidence and "averaged over the selection's repeats" in claims[0].rule
    assert "exact binomial test" in claims[1].evidence and "binomial" in claims[1].rule
    assert "pgd accuracy: sensitive 25.0% vs random 12.0%" in claims[2].evidence
    # the same accuracies on 20 images: neither the robustness gap nor the collapse stands out of the noise
    few = claims_suppression(_suppression_summary(cells, 20))
    assert few[2].verdict == "within noise" and few[1].verdict == "within noise"
    # more robust, but at a clean-accuracy cost beyond the tolerance: the paper's condition fails
    costly = claims_suppression(_suppression_summary(((1.0, 99, 99, 10, 10), (0.95, 90, 98, 25, 12),
                                                      (0.7, 30, 95, 1, 5)), 1000))
    assert costly[2].verdict == "contradicted" and "not similar" in costly[2].evidence
    # no collapse: clean accuracy well above half of the unsuppressed one
    kept = claims_suppression(_suppression_summary(((1.0, 99, 99, 10, 10), (0.95, 98, 98, 12, 12),
                                                    (0.7, 80, 95, 1, 5)), 1000))
    assert kept[1].verdict == "contradicted"
    # 10 vs 14 of 40 images in each of three random repeats: four images differ. Counted as 120 images (12
    # discordant pairs) this would be significant (p = 2.4e-4); tested over the 40 images it is not (p = 1/16).
    repeats = claims_suppression(_suppression_summary(((1.0, 99, 99, 10, 10), (0.95, 98, 98, 12, 12),
                                                       (0.7, 25, 35, 1, 5)), 40))
    assert repeats[0].verdict == "within noise" and "p=0.062" in repeats[0].evidence
    # a summary without per-image results cannot decide a comparison
    bare = claims_suppression(_suppression_summary(cells, 1000).drop(columns="correct_count_by_image"))
    assert bare[0].verdict == "not checked" and "no per-image results" in bare[0].evidence


def test_claims_ratios_and_pat_sensitivity():
    table = pd.DataFrame(
        [
            ("vanilla", "conv10", "conv", 0.5, 1.0),
            ("vanilla", "relu10", "relu", 2.0, 4.0),
            ("vanilla", "conv11", "conv", 0.6, 1.2),
            ("vanilla", "relu11", "relu", 0.5, 3.0),  # one cell where the ReLU damps
            ("pat", "conv10", "conv", 0.1, 0.2),
            ("pat", "relu10", "relu", 0.5, 0.9),
            ("pat", "conv11", "conv", 0.1, 0.2),
            ("pat", "relu11", "relu", 0.3, 0.4),
        ],
        columns=["model", "layer", "kind", "eps=4", "eps=8"],
    )
    claims = {c.text.split(":")[0]: c for c in claims_ratios(table)}
    relu = claims["ReLU layers amplify"]
    # 7 of 8 cells: the sign test is significant (p = 9/256) but one cell disagrees
    assert relu.verdict == "partly" and relu.evidence.startswith("7 of 8") and "p=0.035" in relu.evidence
    assert claims["Conv layers damp"].verdict == "within noise"  # 4 of 4 cells: p = 1/16
    assert claims["pat has lower sensitivity ratios than vanilla in every listed layer and strength"].verdict == \
        "supported"  # 8 of 8 cells, p = 1/256
    assert all("sign test" in c.rule for c in claims.values())

    summary = pd.DataFrame(
        {
            "model": ["vanilla", "pat", "vanilla", "pat"],
            "layer": ["conv1", "conv1", "conv2", "conv2"],
            "depth": [0, 0, 1, 1],
            "mean_sensitivity": [1.0, 1.5, 2.0, 1.0],
            "mean_top10pct": [2.0, 2.0, 4.0, 2.0],
        }
    )
    pat_claims = claims_pat_sensitivity(summary)
    # no channel spread in this summary: the sign test over two layers cannot decide
    assert pat_claims[0].verdict == "within noise" and pat_claims[0].evidence.startswith("1 of 2 layers")
    # with each layer's channel spread, every layer gets a Welch test and Holm combines them
    spread = summary.assign(std_sensitivity=0.2, n_channels=64)
    units = claims_pat_sensitivity(spread)[0]
    assert units.verdict == "contradicted"  # conv1: pat 1.5 vs vanilla 1.0 over 64 channels each
    assert "Welch" in units.evidence and "Holm" in units.rule
    lower = spread.assign(mean_sensitivity=[1.0, 0.97, 2.0, 1.0])  # conv1: t = 0.85, not significant
    partly = claims_pat_sensitivity(lower)[0]
    assert partly.verdict == "partly" and "1 of 2 layers" in partly.evidence.split("; ", 1)[1]
    assert claims_pat_sensitivity(lower.assign(mean_sensitivity=[1.0, 0.5, 2.0, 1.0]))[0].verdict == "supported"


def test_claims_layer_similarity_bottom_vs_top():
    table = pd.DataFrame(
        {
            "layer": list("abcdef"),
            "depth": range(6),
            "total_jaccard": [1, 0.8, 0.5, 0.2, 0, 0],
            "avg_pair_jaccard": [1, 0.9, 0.7, 0.5, 0.3, 0.2],
            "avg_pair_levenshtein": [0.2, 0.2, 0.5, 0.5, 0.9, 0.9],
        }
    )
    claims = claims_layer_similarity(table)
    assert [c.verdict for c in claims] == ["supported", "contradicted", "supported"]
    assert "Kendall tau -1.000 over 6 layers, one-sided p=0.0014" in claims[2].evidence  # exact: 1/720
    assert "Kendall" in claims[0].rule


def test_sns_findings_wires_every_section(tmp_path):
    summary = pd.DataFrame(
        [("clean", s, b, a) for s in ("sensitive", "random") for b, a in ((1.0, 99), (0.95, 98), (0.7, 90))],
        columns=["perturbation", "selection", "beta", "accuracy_pct"],
    ).assign(n_repeats=1, n_images=100)
    summary["correct_count_by_image"] = [",".join("1" if i < a else "0" for i in range(100))
                                         for a in summary.accuracy_pct]
    summary.to_csv(tmp_path / "sup.csv", index=False)
    table = pd.DataFrame(
        [("vanilla", "conv10", "conv", 0.5, 1.0, 1.5), ("vanilla", "relu10", "relu", 2.0, 4.0, 6.0)],
        columns=["model", "layer", "kind", "eps=4", "eps=8", "eps=12"],
    )
    table.to_csv(tmp_path / "t2.csv", index=False)
    means = pd.DataFrame(
        {
            "model": "vanilla",
            "family": "linf_pgd",
            "level": 1,
            "strength": "eps=4",
            "layer": ["conv1", "conv2", "conv3"],
            "kind": "conv",
            "conv": ["conv1", "conv2", "conv3"],
            "position": [0, 2, 4],
            "ratio_all": [0.1, 0.2, 0.4],
            "n_channels_all": 4,
            "ratio_sensitive": [0.2, 0.3, 0.9],
            "n_channels_sensitive": 1,
        }
    )
    means.to_csv(tmp_path / "means.csv", index=False)
    sens = pd.DataFrame(
        {
            "model": ["vanilla", "pat"],
            "layer": "conv1",
            "depth": 0,
            "mean_sensitivity": [2.0, 1.0],
            "std_sensitivity": [0.5, 0.5],
            "n_channels": 64,
            "mean_top10pct": [4.0, 2.0],
        }
    )
    sens.to_csv(tmp_path / "sens.csv", index=False)
    text = sns_findings(
        tmp_path / "f.md",
        suppression={"m-vanilla": tmp_path / "sup.csv"},
        ratio_tables={"vgg16": tmp_path / "t2.csv"},
        ratio_layer_means={"vgg16": tmp_path / "means.csv"},
        sensitivity_summaries={"vgg16": tmp_path / "sens.csv"},
    )
    assert "## Suppressing sensitive neurons — m" in text and "## Sensitivity ratios — vgg16" in text
    # three conv layers cannot show a trend: exact Kendall p = 1/6
    assert "- **within noise** — Error amplification: under linf_pgd at the largest strength the ratio of the sensitive" in text
    assert "- **supported** — pat has lower mean neuron sensitivity than vanilla in every layer" in text
    assert "- **within noise** — Suppressing sensitive channels lowers clean accuracy faster" in text  # equal
    assert "- **contradicted** — Clean accuracy collapses" in text  # 90% of 100 images is far above half of 99%


def test_claims_importance_test_every_class_and_the_overlap_against_chance():
    from advneurons.sns.findings import claims_fc_target, claims_importance

    per_class = pd.DataFrame({"target": range(10), "spearman": [0.4] * 8 + [0.05, 0.02],
                              "spearman_p": [1e-4] * 8 + [0.3, 0.6],
                              "levenshtein_similarity": np.linspace(0.40, 0.58, 10),
                              "jaccard": np.linspace(0.05, 0.15, 10)})
    chance = pd.DataFrame({"metric": ["levenshtein_similarity", "jaccard"], "chance": [0.3, 0.1]})
    rho, overlap = claims_importance(per_class, chance, extension=True)
    # every class positive, 8 of 10 significant after Holm: partly (the old rule, "all positive", said supported)
    assert rho.verdict == "partly" and "8 of 10 classes significant" in rho.evidence and rho.extension
    assert "Spearman" in rho.rule and "Holm" in rho.rule
    # Levenshtein above chance in all 10 classes (exact Wilcoxon p = 1/1024); Jaccard around chance
    assert overlap.verdict == "partly" and "p=0.00098" in overlap.evidence and "Wilcoxon" in overlap.rule
    (fc,) = claims_fc_target(pd.DataFrame({"matches": [True] * 9 + [False]}), n_units=10)
    assert fc.verdict == "partly" and "9 of 10 target classes" in fc.evidence  # binomial p vs chance 1/10: 1e-8
    (none,) = claims_fc_target(pd.DataFrame({"matches": [False] * 2 + [True]}), n_units=10)
    assert none.verdict == "within noise"
