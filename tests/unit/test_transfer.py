"""Transfer check (advneurons.evaluation.transfer): known answers on a model against itself and on a model whose gradients
are masked, the workflow step's refusals, the table, and the findings claim built on it."""

import json

import pandas as pd
import pytest
import torch
from torch import nn

from advneurons.evaluation import robustness
from advneurons.attacks import AttackSpec
from advneurons.models.checkpoint import load_model
from advneurons.data import load_split
from advneurons.evaluation.pairs import attack_pairs, generate_pairs, open_pairs
from advneurons.evaluation.transfer import COLUMNS, transfer_check, transfer_row, transfer_table

PGD = {"type": "pgd", "eps": 32, "steps": 5}
SEED = 0


class Quantised(nn.Module):
    """The model on inputs rounded to 8 bits: the same predictions, but no gradient reaches the input, so a
    white-box gradient attack on it barely moves (the textbook gradient masking)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 255) / 255)


@pytest.fixture(scope="module")
def setting(trained_vgg_path, digits_files):
    model, _ = load_model(trained_vgg_path)
    images, labels = load_split(digits_files["test"])
    spec = AttackSpec.from_config(PGD)
    pairs = generate_pairs(model, images, labels, spec, None, SEED)
    return model, images, labels, spec, pairs


def _whitebox(model, images, labels, spec):
    return robustness.robust_accuracy(model, images, labels, spec, 256, robustness.attack_generator(SEED))


def test_a_model_against_its_own_examples_gains_nothing(setting):
    model, images, labels, spec, pairs = setting
    base_wb = _whitebox(model, images, labels, spec)
    # the stored pair set reproduces the white-box cell: same attack, images and generator
    assert pairs.accuracy()[1] == pytest.approx(base_wb)
    row = transfer_row(model, pairs, base_wb, base_wb, len(labels), "m", "m", "pgd", spec.describe())
    assert row["defended_transfer"] == pytest.approx(base_wb)
    assert row["upper_bound"] == pytest.approx(base_wb)
    assert row["whitebox_gain"] == 0 and row["bounded_gain"] == pytest.approx(0)
    assert row["defended_clean"] == pytest.approx(row["base_clean"])
    assert set(row) == set(COLUMNS)


def test_masked_gradients_show_a_white_box_gain_that_the_transfer_removes(setting):
    model, images, labels, spec, pairs = setting
    masked = Quantised(model).eval()
    base_wb = _whitebox(model, images, labels, spec)
    masked_wb = _whitebox(masked, images, labels, spec)
    assert masked_wb > base_wb + 0.2  # the attack cannot see through the rounding
    row = transfer_row(masked, pairs, masked_wb, base_wb, len(labels), "masked", "base", "pgd", spec.describe())
    assert row["whitebox_gain"] > 0.2
    assert row["upper_bound"] == pytest.approx(row["defended_transfer"])
    assert row["bounded_gain"] < 0.05  # rounding changes few predictions of the transferred examples
    direct = (masked(torch.from_numpy(pairs.perturbed)).argmax(1).numpy() == pairs.label).mean()
    assert row["defended_transfer"] == pytest.approx(direct)


def _records(path, model_name, accuracy, n, attack="pgd"):
    pd.DataFrame([{"model": model_name, "attack": attack, "n_images": n, "accuracy": accuracy,
                   "description": "L-inf PGD"}]).to_csv(path, index=False)
    return path


def test_workflow_step_writes_the_row_and_the_table(setting, trained_vgg_path, digits_files, tmp_path):
    model, images, labels, spec, pairs = setting
    attack_pairs(trained_vgg_path, digits_files["test"], PGD, None, SEED, 64, tmp_path / "pairs.npz",
                    tmp_path / "pairs.json")
    base_wb = _whitebox(model, images, labels, spec)
    n = len(labels)
    frame = transfer_check(trained_vgg_path, tmp_path / "pairs.npz", _records(tmp_path / "d.csv", "d", 0.9, n),
                           _records(tmp_path / "b.csv", "b", base_wb, n), "pgd", "vgg16-pat_x", "vgg16-pat", SEED, 64,
                           tmp_path / "row.csv", tmp_path / "row.json")
    row = pd.read_csv(tmp_path / "row.csv").iloc[0]
    assert row.defended_transfer == pytest.approx(open_pairs(tmp_path / "pairs.npz").accuracy()[1])
    assert row.upper_bound == pytest.approx(min(0.9, row.defended_transfer))
    assert json.loads((tmp_path / "row.json").read_text())["row"]["model"] == "vgg16-pat_x"
    table = transfer_table([tmp_path / "row.csv"], {"pgd": "L-inf PGD"}, tmp_path / "t.csv", tmp_path / "t.md")
    assert table.column.tolist() == ["L-inf PGD"] and len(frame) == 1
    md = (tmp_path / "t.md").read_text()
    assert f"{100 * row.defended_transfer:.1f}" in md and "gradient masking" in md


def test_missing_or_mismatched_records_fail_before_the_model_is_loaded(tmp_path):
    missing_model = tmp_path / "no-model.pt"  # never reached: the records are checked first
    fgsm_only = _records(tmp_path / "d.csv", "d", 0.5, 10, attack="fgsm")
    base = _records(tmp_path / "b.csv", "b", 0.4, 10)
    with pytest.raises(ValueError, match="0 records of attack 'pgd'"):
        transfer_check(missing_model, tmp_path / "p.npz", fgsm_only, base, "pgd", "d", "b", 0, 8,
                       tmp_path / "o.csv", tmp_path / "o.json")
    other_n = _records(tmp_path / "d2.csv", "d", 0.5, 20)
    with pytest.raises(ValueError, match="different image counts"):
        transfer_check(missing_model, tmp_path / "p.npz", other_n, base, "pgd", "d", "b", 0, 8,
                       tmp_path / "o.csv", tmp_path / "o.json")
    assert not (tmp_path / "o.csv").exists()


def test_defense_claim_decides_the_transfer_with_a_paired_test(tmp_path):
    from advneurons.defenses.tables import defense_claims
    from claim_helpers import correct_vector, write_claim_inputs

    n = 360
    rows = [["vgg16", "vgg16-pat", "pat", "pat", 98.0, 70.0],
            ["vgg16", "vgg16-pat_meansparse", "pat_meansparse", "meansparse", 97.0, 80.0],
            ["vgg16", "vgg16-pat_igdefense", "pat_igdefense", "ig_defense", 98.0, 78.0]]
    files = write_claim_inputs(tmp_path, rows, ["L-inf PGD"], n)
    transfer = []
    # MeanSparse: 60% on transferred examples (36 images below the base); IG-Defense: 70.56%, two images above the base's
    # 70% (the margin the README once called a surviving gain)
    for model, wb, tr in (("vgg16-pat_meansparse", 0.80, 0.60), ("vgg16-pat_igdefense", 0.78, 254 / 360)):
        transfer.append({"model": model, "base": "vgg16-pat", "attack": "pgd", "column": "L-inf PGD",
                         "description": "", "n_transfer": n, "base_clean": 0.98, "base_whitebox": 0.70,
                         "defended_clean": 0.97, "defended_whitebox": wb, "defended_transfer": tr, "n_whitebox": n,
                         "upper_bound": min(wb, tr), "whitebox_gain": wb - 0.70, "bounded_gain": min(wb, tr) - 0.70,
                         "transfer_correct_by_image": "".join("y" if c else "n"
                                                              for c in correct_vector(100 * tr, n).tolist())})
    pd.DataFrame(transfer).to_csv(tmp_path / "transfer.csv", index=False)
    (section,) = defense_claims(files["final"], {}, files["records"], files["settings"], {},
                                transfer_csv=tmp_path / "transfer.csv")
    from advneurons.report.findings import MASKING

    verdicts = {c.text.split(" raises")[0]: c for c in section.claims}
    # both white-box gains are significant (36 and 29 of 360 images one way) and neither survives the transfer
    assert verdicts["MeanSparse"].verdict == MASKING
    assert verdicts["IG-Defense"].verdict == MASKING
    assert "survives the adversarial examples transferred from vgg16-pat" in verdicts["MeanSparse"].text
    assert "transfer gain: contradicted" in verdicts["MeanSparse"].evidence
    assert "transfer gain: within noise" in verdicts["IG-Defense"].evidence  # 2 images of 360
    assert "discordant 2 vs 0" in verdicts["IG-Defense"].evidence
    assert "AutoAttack gain: no evidence in this config" in verdicts["IG-Defense"].evidence
    # without a transfer table the white-box gain alone is never counted as supported
    (plain,) = defense_claims(files["final"], {}, files["records"], files["settings"], {})
    assert {c.verdict for c in plain.claims} == {"not checked"}
    assert all("missing evidence: transfer and AutoAttack" in c.evidence for c in plain.claims)
