"""SNS by fine-tuned layer range (TIP Fig 16): the models the sweep trains, the config checks, the table."""

import copy
import re

import pandas as pd
import pytest
import torch
import yaml

from advneurons.config import settings
from advneurons.evaluation.paired_stats import wilson_interval
from advneurons.evaluation.robustness import accuracy_record, records_frame
from advneurons.sns.layer_range import layer_range_table, sns_layer_range
from workflow_helpers import ROOT


@pytest.fixture()
def cfg():
    return settings.validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))


def test_the_trainings_own_range_reuses_its_model_and_others_fine_tune_from_their_first_layer(cfg):
    models = settings.sns_layer_range_models(cfg)
    by_first = {(m["arch"], m["first_layer"]): m for m in models}
    defense_ids = set(settings.defense_entries(cfg))
    own = by_first[("vgg16", "conv8")]
    assert own["entry"] is None and own["model_id"] in defense_ids
    assert own["layers"] == [f"conv{i}" for i in range(8, 14)]
    later = by_first[("vgg16", "conv11")]
    assert later["layers"] == ["conv11", "conv12", "conv13"]
    assert later["entry"]["training"]["sns_layers"] == {"vgg16": ["conv11", "conv12", "conv13"]}
    assert later["entry"]["training_name"] == "sns_sen_from_conv11"
    # fine-tuned from the same base model as sns_sen, with everything else of sns_sen
    sen = settings.defense_entries(cfg)[own["model_id"]]
    assert later["entry"]["base"] == sen["base"]
    assert {k: v for k, v in later["entry"]["training"].items() if k != "sns_layers"} == sen["training"]
    assert by_first[("resnet18", "l4b1c1")]["layers"] == ["l4b1c1", "l4b1c2", "l4b2c1", "l4b2c2"]
    assert set(settings.sns_layer_range_entries(cfg)) == {m["model_id"] for m in models if m["entry"] is not None}


def test_changing_the_range_of_one_model_leaves_the_others_ids(cfg):
    before = {(m["arch"], m["first_layer"]): m["model_id"] for m in settings.sns_layer_range_models(cfg)}
    changed = copy.deepcopy(cfg)
    changed["sns_layer_range"]["first_layers"]["vgg16"] = ["conv8", "conv11", "conv5"]
    after = {(m["arch"], m["first_layer"]): m["model_id"] for m in settings.sns_layer_range_models(changed)}
    assert all(after[key] == value for key, value in before.items())
    assert [m["first_layer"] for m in settings.sns_layer_range_models(changed) if m["arch"] == "vgg16"] == [
        "conv5", "conv8", "conv11"]  # in depth order


@pytest.mark.parametrize("change, key", [
    (lambda c: c["sns_layer_range"]["first_layers"].__setitem__("vgg16", ["conv14"]),
     "sns_layer_range.first_layers.vgg16[0]"),
    (lambda c: c["sns_layer_range"]["first_layers"].pop("resnet18"), "sns_layer_range.first_layers"),
    (lambda c: c["sns_layer_range"].__setitem__("training", "pat"), "sns_layer_range.training"),
    (lambda c: c["sns_layer_range"].__setitem__("attacks", ["pgdd"]), "sns_layer_range.attacks[0]"),
])
def test_bad_layer_range_settings_are_refused_naming_the_key(change, key):
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    change(raw)
    with pytest.raises(settings.ConfigError, match=re.escape(f"config key '{key}'")):
        settings.validate_config(raw)


def _records(tmp_path):
    pgd = {"type": "pgd", "eps": 32, "steps": 10}
    rows = []
    for label, clean, robust in (("vgg16-sns_sen", 0.98, 0.70), ("vgg16-sns_sen_from_conv11", 0.97, 0.60)):
        rows += [accuracy_record(label, "clean", None, 200, clean, torch.arange(200) < round(clean * 200)),
                 accuracy_record(label, "pgd", pgd, 200, robust, torch.arange(200) < round(robust * 200))]
    path = tmp_path / "records.csv"
    records_frame(rows).to_csv(path, index=False)
    return path


MODELS = {"vgg16-sns_sen": {"arch": "vgg16", "first_layer": "conv8", "n_layers": 6},
          "vgg16-sns_sen_from_conv11": {"arch": "vgg16", "first_layer": "conv11", "n_layers": 3}}


def test_table_has_every_range_and_column_with_wilson_intervals(tmp_path):
    records = pd.read_csv(_records(tmp_path))
    table = layer_range_table(records, MODELS, {"pgd": "L-inf PGD"})
    assert len(table) == 4 and set(table.column) == {"Clean", "L-inf PGD"}
    row = table[(table.first_layer == "conv11") & (table.column == "L-inf PGD")].iloc[0]
    low, high = wilson_interval(120, 200)
    assert row.accuracy_pct == pytest.approx(60.0) and row.n_layers == 3
    assert (row.ci_low_pct, row.ci_high_pct) == pytest.approx((100 * low, 100 * high))
    with pytest.raises(ValueError, match="0 records of model 'vgg16-sns_sen' under 'fgsm'"):
        layer_range_table(records, MODELS, {"fgsm": "FGSM"})


def test_workflow_step_writes_table_markdown_and_figure(tmp_path):
    out = [tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.png"]
    sns_layer_range([_records(tmp_path)], MODELS, {"pgd": "L-inf PGD"}, "sns_sen", *out)
    md = out[1].read_text()
    assert "| conv11" in md and "60.0 [" in md and out[2].stat().st_size > 0
    assert len(pd.read_csv(out[0])) == 4
