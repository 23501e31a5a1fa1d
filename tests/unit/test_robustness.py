"""Robust-accuracy evaluation, the TIP table layouts with their settings tables, and the PGD sweeps."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from advneurons import data

from advneurons.models import checkpoint

from advneurons.evaluation import robustness
from advneurons.attacks import AttackSpec, run_attack
from advneurons.evaluation.accuracy import clean_accuracy
from advneurons.evaluation.robustness import TableError, accuracy_record, records_frame


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(20, 3, 32, 32, generator=g), torch.randint(0, 10, (20,), generator=g)


def test_robust_accuracy_counts_correct_predictions_on_the_perturbed_images(tiny_vgg, batch):
    x, y = batch
    spec = AttackSpec("pgd", eps=4 / 255, steps=2)
    with torch.no_grad():
        expected = (tiny_vgg(run_attack(spec, tiny_vgg, x, y)).argmax(1) == y).float().mean().item()
    assert robustness.robust_accuracy(tiny_vgg, x, y, spec, batch_size=7) == pytest.approx(expected)
    # eps 0 changes nothing, so the accuracy is the clean one
    zero = AttackSpec("pgd", eps=0.0, steps=1)
    assert robustness.robust_accuracy(tiny_vgg, x, y, zero, batch_size=8) == pytest.approx(
        clean_accuracy(tiny_vgg, x, y, batch_size=3))


def test_robust_accuracy_uses_the_generator(tiny_vgg, batch):
    x, y = batch
    spec = AttackSpec("gaussian", sigma=0.5)
    runs = [robustness.robust_accuracy(tiny_vgg, x, y, spec, 8, torch.Generator().manual_seed(s)) for s in (1, 1)]
    assert runs[0] == runs[1]


def _split_and_model(tmp_path, tiny_vgg, n=24):
    parts = data.prepare_digits(0.2, 0.1, 0)
    test = data.Split(parts["test"].images[:n], parts["test"].labels[:n])
    data.save_split(test, tmp_path / "test.npz")
    checkpoint.save_model(tiny_vgg, tmp_path / "model.pt", "vgg16", "digits", 0.0625, 10, {"params": {"note": "test"}})
    return tmp_path / "model.pt", tmp_path / "test.npz"


ATTACKS = {
    "fgsm": {"type": "fgsm", "eps": 32},
    "pgd": {"type": "pgd", "eps": 32, "steps": 3},
    "noise": {"type": "gaussian", "severity": 5},
}


def test_evaluate_robustness_writes_records_that_match_a_direct_computation(tmp_path, tiny_vgg):
    model_path, test_path = _split_and_model(tmp_path, tiny_vgg)
    out = robustness.evaluate_attack(
        model_path, test_path, ATTACKS, "vgg16-vanilla", n_images=16, seed=3, batch_size=5,
        out_csv=tmp_path / "rec.csv", meta_path=tmp_path / "rec.json",
    )
    rec = pd.read_csv(tmp_path / "rec.csv")
    assert list(rec.columns) == list(robustness.RECORD_COLUMNS)
    assert rec.attack.tolist() == ["clean", "fgsm", "pgd", "noise"]
    assert (rec.n_images == 16).all()
    assert rec.loc[rec.attack == "pgd", "eps_255"].item() == 32 and rec.loc[rec.attack == "pgd", "steps"].item() == 3
    assert json.loads(rec.loc[rec.attack == "noise", "config"].item()) == {"type": "gaussian", "severity": 5}
    meta = json.loads((tmp_path / "rec.json").read_text())
    assert meta["accuracy"]["pgd"] == pytest.approx(out.loc[out.attack == "pgd", "accuracy"].item())

    # the same subset and generator, computed by hand
    from advneurons.evaluation.pairs import select_subset

    images, labels = data.load_split(test_path)
    idx = torch.from_numpy(select_subset(len(labels), 16, 3))
    x, y = images[idx], labels[idx]
    for name, cfg in ATTACKS.items():
        spec = AttackSpec.from_config(cfg)
        acc = robustness.robust_accuracy(tiny_vgg, x, y, spec, 5, robustness.attack_generator(3))
        assert rec.loc[rec.attack == name, "accuracy"].item() == pytest.approx(acc)
        # per-image records: the same images, in the subset's order, and they add up to the accuracy
        by_hand = robustness.robust_correct(tiny_vgg, x, y, spec, 5, robustness.attack_generator(3)).numpy()
        stored = robustness.decode_correct(rec.loc[rec.attack == name, "correct_by_image"].item())
        assert (stored == by_hand).all() and stored.mean() == pytest.approx(acc)
    clean = robustness.decode_correct(rec.loc[rec.attack == "clean", "correct_by_image"].item())
    with torch.no_grad():
        assert (clean == (tiny_vgg(x).argmax(1) == y).numpy()).all()


def test_per_image_records_round_trip_and_refuse_other_text():
    correct = torch.tensor([True, False, False, True])
    assert robustness.encode_correct(correct) == "ynny"
    assert robustness.decode_correct("ynny").tolist() == correct.tolist()
    assert robustness.decode_correct(float("nan")).size == 0  # a record without per-image results
    with pytest.raises(ValueError, match="string of y/n"):
        robustness.decode_correct("1001")
    with pytest.raises(ValueError, match="do not match"):
        robustness.accuracy_record("m", "clean", None, 4, 0.75, correct)


def test_a_bad_attack_fails_before_the_model_is_loaded(tmp_path):
    with pytest.raises(ValueError, match="attack 'bad'.*unknown attack type"):
        robustness.evaluate_attack(tmp_path / "missing.pt", tmp_path / "missing.npz", {"bad": {"type": "pgdd", "eps": 1}},
                                       "m", None, 0, 8, tmp_path / "a.csv", tmp_path / "a.json")


# ------------------------------------------------------------------------------------------------ tables
TIP_ATTACKS = {
    "cw": {"type": "cw_l2"},
    "pgd_l2": {"type": "pgd_l2", "eps": 320},
    "pgd": {"type": "pgd", "eps": 32},
    "fgsm": {"type": "fgsm", "eps": 32},
    "spsa": {"type": "spsa", "eps": 32},
    "nattack": {"type": "nattack", "eps": 32},
    "noise3": {"type": "gaussian", "severity": 3},
}


def _records(models=("vanilla", "pat"), attacks=TIP_ATTACKS, n=100):
    rows = []
    for i, m in enumerate(models):
        rows.append(accuracy_record(m, "clean", None, n, 0.9 - 0.05 * i))
        for j, (name, cfg) in enumerate(attacks.items()):
            rows.append(accuracy_record(m, name, cfg, n, round(0.01 * (j + 1) + 0.3 * i, 4)))
    return records_frame(rows)


def test_table_iii_has_the_papers_columns_and_traceable_cells():
    records = _records()
    cols = robustness.table_iii_columns(records)
    assert [label for label, _ in cols] == ["Clean", "C&W", "L2 PGD", "L-inf PGD", "FGSM", "SPSA", "NAttack"]
    table, settings = robustness.accuracy_table(records, cols)
    assert table.model.tolist() == ["vanilla", "pat"]
    assert table.loc[0, "Clean"] == 90.0 and table.loc[1, "Clean"] == 85.0
    assert table.loc[0, "L-inf PGD"] == 3.0 and table.loc[1, "L-inf PGD"] == 33.0  # pgd is the 3rd attack
    assert len(settings) == 2 * 7
    cell = settings[(settings.model == "pat") & (settings.column == "L2 PGD")].iloc[0]
    assert (cell.attack, cell.threat, cell.eps_255, cell.steps, cell.n_images) == ("pgd_l2", "l2", 320, 10, 100)
    assert cell.accuracy_pct == table.loc[1, "L2 PGD"]
    assert "unbounded" in settings[settings.column == "C&W"].description.iloc[0]


def test_table_iii_needs_a_choice_when_a_type_has_several_attacks():
    records = _records(attacks={**TIP_ATTACKS, "pgd8": {"type": "pgd", "eps": 8}})
    with pytest.raises(TableError, match="L-inf PGD.*pgd, pgd8"):
        robustness.table_iii_columns(records)
    cols = dict((label, a) for label, a in robustness.table_iii_columns(records, {"L-inf PGD": "pgd8"}))
    assert cols["L-inf PGD"] == "pgd8"


def test_a_missing_record_is_an_error_not_a_blank_cell():
    records = _records()
    records = records[~((records.model == "pat") & (records.attack == "spsa"))]
    with pytest.raises(TableError, match="pat.*spsa"):
        robustness.accuracy_table(records, robustness.table_iii_columns(records))


def test_table_i_orders_pgd_by_eps_and_noise_by_severity():
    attacks = {
        "pgd24": {"type": "pgd", "eps": 24}, "pgd8": {"type": "pgd", "eps": 8},
        "pgd32": {"type": "pgd", "eps": 32}, "pgd16": {"type": "pgd", "eps": 16},
        **{f"s{k}": {"type": "gaussian", "severity": k} for k in (5, 1, 3, 2, 4)},
        "fgsm": {"type": "fgsm", "eps": 32},
    }
    cols = robustness.table_i_columns(_records(attacks=attacks))
    assert [label for label, _ in cols] == [
        "Clean", "PGD eps=8/255", "PGD eps=16/255", "PGD eps=24/255", "PGD eps=32/255",
        "Gaussian s=1", "Gaussian s=2", "Gaussian s=3", "Gaussian s=4", "Gaussian s=5",
    ]
    clash = _records(attacks={"a": {"type": "pgd", "eps": 8}, "b": {"type": "pgd", "eps": 8, "steps": 20}})
    with pytest.raises(TableError, match="one PGD attack per eps"):
        robustness.table_i_columns(clash)


def test_robustness_tables_step_writes_table_and_settings(tmp_path):
    paths = []
    for m in ("vanilla", "pat"):
        path = tmp_path / f"{m}.csv"
        _records(models=(m,)).to_csv(path, index=False)
        paths.append(path)
    out = {k: tmp_path / f"t.{k}" for k in ("csv", "md")}
    sets = {k: tmp_path / f"s.{k}" for k in ("csv", "md")}
    table = robustness.robustness_table(paths, "table_iii", "digits", out["csv"], out["md"], sets["csv"], sets["md"])
    assert pd.read_csv(out["csv"]).equals(table)
    md = out["md"].read_text()
    assert "TIP Table III" in md and "L2 PGD eps=320/255" in md and "s.md" in md
    assert len(pd.read_csv(sets["csv"])) == 14
    with pytest.raises(TableError, match="unknown table layout"):
        robustness.robustness_table(paths, "table_v", "digits", out["csv"], out["md"], sets["csv"], sets["md"])
    # the same record twice (e.g. the clean row of per-attack files) collapses; different values conflict
    same = robustness.robustness_table(paths + paths[:1], "table_iii", "digits", out["csv"], out["md"], sets["csv"], sets["md"])
    assert same.equals(table)
    changed = _records(models=("vanilla",))
    changed.loc[changed.attack == "pgd", "accuracy"] = 0.99
    changed.to_csv(tmp_path / "changed.csv", index=False)
    with pytest.raises(TableError, match="conflicting records.*vanilla.*pgd"):
        robustness.robustness_table(paths + [tmp_path / "changed.csv"], "table_iii", "digits", out["csv"], out["md"], sets["csv"], sets["md"])


def test_records_reject_bad_values():
    with pytest.raises(ValueError, match="fraction"):
        accuracy_record("m", "pgd", {"type": "pgd", "eps": 8}, 10, 45.0)
    with pytest.raises(ValueError, match="needs its settings"):
        accuracy_record("m", "pgd", None, 10, 0.5)


# ------------------------------------------------------------------------------------------------ sweeps
def test_sweep_step_and_figures(tmp_path, tiny_vgg):
    model_path, test_path = _split_and_model(tmp_path, tiny_vgg, n=12)
    csvs = []
    for name in ("vgg16-vanilla", "vgg16-other"):
        out = tmp_path / f"{name}.csv"
        frame = robustness.pgd_sweep(
            model_path, test_path, name, eps=32, steps_values=[1, 2, 3], eps_values=[8, 16], steps=2,
            n_images=8, seed=0, batch_size=4, out_csv=out, meta_path=tmp_path / f"{name}.json",
        )
        csvs.append(out)
    assert frame.sweep.tolist() == ["steps"] * 3 + ["eps"] * 2
    assert frame.steps.tolist() == [1, 2, 3, 2, 2] and frame.eps_255.tolist() == [32, 32, 32, 8, 16]
    assert frame.step_size_255.iloc[0] == pytest.approx(32.0) and frame.step_size_255.iloc[3] == pytest.approx(8 / np.sqrt(2))
    combined = robustness.sweep_figures(csvs, tmp_path / "all.csv", tmp_path / "k.png", tmp_path / "eps.png")
    assert len(combined) == 10 and set(combined.model) == {"vgg16-vanilla", "vgg16-other"}
    for png in ("k.png", "eps.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    odd = frame.assign(eps_255=frame.eps_255.where(frame.sweep != "steps", 16.0), model="odd")
    odd.to_csv(tmp_path / "odd.csv", index=False)
    with pytest.raises(TableError, match="disagree on the fixed eps"):
        robustness.sweep_figures(csvs + [tmp_path / "odd.csv"], tmp_path / "x.csv", tmp_path / "x.png", tmp_path / "y.png")


def test_tables_mark_cells_whose_attack_warned(tmp_path):
    import json

    from advneurons.evaluation.robustness import accuracy_record, records_frame, robustness_table

    correct = torch.arange(20) < 15
    log = {"robust_accuracy_after_pct": {"clean": 100.0, "apgd-ce": 90.0, "square": 75.0},
           "warnings": ["Square Attack has decreased the robust accuracy of 15.00%."]}
    rows = [accuracy_record("m", "clean", None, 20, 1.0, torch.ones(20, dtype=torch.bool)),
            accuracy_record("m", "pgd", {"type": "pgd", "eps": 8}, 20, 0.75, correct),
            accuracy_record("m", "autoattack", {"type": "autoattack", "eps": 8}, 20, 0.75, correct, log)]
    assert json.loads(rows[2]["attack_log"]) == log and rows[1]["attack_log"] == ""
    records_frame(rows).to_csv(tmp_path / "r.csv", index=False)
    out = {k: tmp_path / f"{k}" for k in ("t.csv", "t.md", "s.csv", "s.md")}
    robustness_table([tmp_path / "r.csv"], "table_iii", "digits", out["t.csv"], out["t.md"], out["s.csv"], out["s.md"],
                      columns={"L-inf PGD": "pgd"})
    text = out["t.md"].read_text()
    assert "| 75.00 †" in text and "| 75.00 " in text  # the warned AutoAttack cell marked, the PGD cell not
    assert pd.read_csv(out["t.csv"])["AutoAttack"].item() == 75.0  # the CSV stays numeric
    assert "Square Attack has decreased" in pd.read_csv(out["s.csv"]).set_index("column").loc["AutoAttack", "warnings"]
    from advneurons.evaluation.robustness import accuracy_table, mark_warned_cells, read_records

    table, settings = accuracy_table(read_records([tmp_path / "r.csv"]), [("Clean", "clean"), ("AutoAttack", "autoattack")])
    assert settings.loc[settings.column == "AutoAttack", "accuracy_after_stages"].item() == "clean 100.00; apgd-ce 90.00; square 75.00"
    marked, note = mark_warned_cells(table, settings)
    assert marked.loc[0, "AutoAttack"] == "75.00 †" and marked.loc[0, "Clean"] == 100.0
    assert "m, AutoAttack: Square Attack has decreased" in note and table.loc[0, "AutoAttack"] == 75.0
