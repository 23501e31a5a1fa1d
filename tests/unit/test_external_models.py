"""External models: a factory network with its own module names and a RobustBench zoo entry, through layer
discovery, weight loading (weights_only), the pipeline checkpoint, the config check and the plan."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from advneurons.config import settings
from advneurons.models import external, zoo
from advneurons.models.checkpoint import load_model
from external_factory import MEAN, STD, small_cnn, write_trained_checkpoint
from workflow_helpers import ROOT


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    return write_trained_checkpoint(tmp_path_factory.mktemp("external") / "small.pt")


def _entry(path, **kwargs):
    return {"source": {"factory": "external_factory:small_cnn", "kwargs": {"width": 8, **kwargs},
                       "checkpoint": str(path)},
            "normalization": {"mean": MEAN, "std": STD}}


def test_the_probe_follows_tensors_to_each_layers_batchnorm_and_relu():
    layers = external.probe_layers(small_cnn(8))
    assert list(layers) == ["stem.0", "block_a", "block_b", "plain", "head", ""]  # forward order, then the ReLUs
    assert layers["stem.0"] == {"kind": "conv", "channels": 8, "bn": "stem.1", "relu": "stem.2"}
    assert (layers["block_a"]["bn"], layers["block_b"]["bn"]) == ("norm_a", "norm_b")
    assert layers["plain"] == {"kind": "conv", "channels": 32, "bn": None, "relu": None}  # F.relu is invisible
    assert layers["head"]["kind"] == "linear"
    assert (layers[""]["relus"], layers[""]["shared_relus"]) == (["stem.2"], ["shared"])
    model = external.ExternalModel(small_cnn(8), "inside", layers)
    bn = model.layers("bn")
    assert bn["stem.0"] is model.network.stem[1] and bn["plain"] is model.network.plain  # no BatchNorm: the conv
    assert model.layers("conv")["block_a"] is model.network.block_a and bn["fc"] is model.network.head  # the logits
    with pytest.raises(external.ExternalModelError, match="layer block_a has no ReLU module of its own"):
        model.layers("relu")
    assert list(model.relus()) == ["stem.2"] and model.unreachable_relus() == ["shared"]
    assert model.fc is model.network.head
    with pytest.raises(external.ExternalModelError, match="not Conv2d/Linear modules"):
        external.ExternalModel(small_cnn(8), "inside", layers, selected=["stem.1"])


def test_import_loads_user_weights_normalises_inside_and_round_trips_through_a_pipeline_checkpoint(
        tmp_path, small_weights):
    model, record = external.import_external("small", _entry(small_weights), 10)
    raw = small_cnn(8)
    state = torch.load(small_weights, weights_only=True)["state_dict"]
    raw.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    raw.eval()
    x = torch.rand(4, 3, 32, 32)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), raw((x - mean) / std), atol=1e-6)  # [0, 1] in, normalised inside
    external.import_model("small", _entry(small_weights), "digits", 10, tmp_path / "model.pt", tmp_path / "meta.json")
    loaded, ckpt = load_model(tmp_path / "model.pt")
    assert isinstance(loaded, external.ExternalModel) and ckpt["arch"] == "small"
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    meta = yaml.safe_load((tmp_path / "meta.json").read_text())
    assert meta["shared_relus"] == ["shared"] and meta["params"]["weights_sha256"]
    # the analyses' view of it: neuron sensitivity at the BatchNorm site runs on the discovered layers
    from advneurons.evaluation.sensitivity import compute_neuron_sensitivity

    sens = compute_neuron_sensitivity(loaded, [(x, (x + 0.03).clamp(0, 1))], site="bn")
    assert list(sens) == ["stem.0", "block_a", "block_b", "plain", "fc"]
    assert [len(v) for v in sens.values()] == [8, 16, 16, 32, 10]


def test_bad_weights_and_factories_fail_naming_the_problem(tmp_path, small_weights):
    with pytest.raises(external.ExternalModelError, match="weights file .*missing.pt does not exist"):
        external.import_external("small", _entry(tmp_path / "missing.pt"), 10)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(small_weights.read_bytes()[:2000])
    with pytest.raises(external.ExternalModelError, match="truncated.pt is truncated or not a PyTorch checkpoint"):
        external.import_external("small", _entry(truncated), 10)
    with pytest.raises(external.ExternalModelError, match=r"small.pt does not match the network: .*of other shape"):
        external.import_external("small", _entry(small_weights, width=16), 10)
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": small_cnn(8).state_dict(), "net": small_cnn(8)}, pickled)  # a whole module pickled
    with pytest.raises(external.ExternalModelError, match="refused to load .*pickled.pt"):
        external.import_external("small", _entry(pickled), 10)
    bad = _entry(small_weights)
    bad["source"]["factory"] = "external_factory:no_such_function"
    with pytest.raises(external.ExternalModelError, match="has no function 'no_such_function'"):
        external.import_external("small", bad, 10)
    bad["source"]["factory"] = "no_such_module_xyz:f"
    with pytest.raises(external.ExternalModelError, match="cannot import module 'no_such_module_xyz'"):
        external.import_external("small", bad, 10)
    five = tmp_path / "five.pt"
    torch.save(small_cnn(8, num_classes=5).state_dict(), five)
    with pytest.raises(external.ExternalModelError, match="outputs of shape \\(2, 5\\).*10 classes"):
        external.import_external("small", _entry(five, num_classes=5), 10)


def _config(**external_models):
    config = yaml.safe_load((ROOT / "presets" / "quick.yaml").read_text())
    config["external_models"] = external_models
    return config


def test_the_config_check_fails_before_any_job_and_is_cached(tmp_path, small_weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(settings.ConfigError, match="external_models.small.*missing.pt does not exist"):
        settings.validate_config(_config(small=_entry(tmp_path / "missing.pt")))
    with pytest.raises(settings.ConfigError, match="external_models.small.*does not match the network"):
        settings.validate_config(_config(small=_entry(small_weights, width=16)))
    with pytest.raises(settings.ConfigError, match="'external_models': 'Small' does not match"):  # names label rows
        settings.validate_config(_config(Small=_entry(small_weights)))
    with pytest.raises(settings.ConfigError, match="external_models.small.normalization"):
        settings.validate_config(_config(small={**_entry(small_weights), "normalization": {"mean": [0.5]}}))
    calls = []
    real = external.import_external
    monkeypatch.setattr(external, "import_external", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(2):
        settings.validate_config(_config(small=_entry(small_weights)))
    assert len(calls) == 1  # the second parse found the passed check in .snakemake/advneurons/
    small_weights.touch()  # new weights (mtime): checked again
    settings.validate_config(_config(small=_entry(small_weights)))
    assert len(calls) == 2


def test_the_plan_puts_external_models_in_the_tables_and_the_sensitivity_stage(tmp_path, small_weights,
                                                                               monkeypatch):
    from advneurons.workflow import targets
    from advneurons.workflow.plan import WILDCARD_PATTERNS, Plan
    from advneurons.workflow.wiring import JobWiring

    monkeypatch.chdir(tmp_path)
    config = settings.validate_config(_config(small=_entry(small_weights)))
    plan = Plan(config)
    (model_id,) = plan.external
    import re

    assert re.fullmatch(WILDCARD_PATTERNS["model"], model_id) and model_id.startswith("small-external~")
    assert plan.model_label(model_id) == "small-external"
    assert plan.model_path(model_id) == f"results/{plan.data_id}/models/{model_id}/model.pt"
    table_iii = config["robustness"]["table_iii"].values()
    assert all(any(f"/{model_id}/" in p for p in plan.robustness_records([a])) for a in table_iii)
    assert any(model_id in p for p in plan.final_table_records())
    assert plan.sensitivity_file(model_id) in targets.sensitivity(plan)
    assert model_id not in plan.analysed and model_id not in plan.trained  # no SNS/PSN analyses, no training
    jobs = JobWiring(plan)
    assert "small-external" in jobs.final_table_models(None)
    wildcards = type("W", (), {"model": model_id})()
    entry = config["external_models"]["small"]
    assert jobs.external_settings(wildcards) == {"name": "small", "entry": {
        "source": entry["source"], "normalization": entry["normalization"], "layers": None}}
    assert jobs.external_weights(wildcards) == str(small_weights)
    assert plan.long_table_models()["small-external"] == {"arch": "small", "training": "external",
                                                          "method": "external"}
    # a changed entry is a new model (new id, new paths); an unchanged one keeps its id
    again = Plan(settings.validate_config(_config(small=_entry(small_weights))))
    assert list(again.external) == [model_id]
    other = copy.deepcopy(_entry(small_weights))
    other["normalization"] = "inside"
    assert list(Plan(settings.validate_config(_config(small=other))).external) != [model_id]


# ------------------------------------------------------------------------------------------ RobustBench
def test_a_robustbench_entry_needs_its_weights_where_robustbench_keeps_them(tmp_path):
    entry = {"source": {"robustbench": {"name": "Standard", "threat_model": "Linf", "dataset": "cifar10",
                                        "model_dir": str(tmp_path / "models")}},
             "normalization": "inside"}
    where = tmp_path / "models" / "cifar10" / "Linf" / "Standard.pt"
    with pytest.raises(external.ExternalModelError,
                       match=f"'standard': .*weights file {where} not found. Offline, download it by hand"):
        external.import_external("standard", entry, 10)
    with pytest.raises(zoo.ZooError, match="has no cifar10 Linf model 'Standrd'"):
        zoo.architecture("Standrd", "Linf", "cifar10", str(tmp_path / "models"))
    # a zoo architecture (WideResNet-28-10) saved with random weights at that place, as RobustBench's files are
    torch.manual_seed(0)
    network = zoo._import_zoo()[0]
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    random_weights = network[BenchmarkDataset("cifar10")][ThreatModel("Linf")]["Standard"]["model"]().state_dict()
    where.parent.mkdir(parents=True)
    torch.save(random_weights, where)
    model, record = external.import_external("standard", entry, 10)
    assert type(model.network).__name__ == "WideResNet" and record["layer_map"]["fc"]["kind"] == "linear"
    assert sum(1 for v in record["layer_map"].values() if v.get("kind") == "conv") == 28
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # a zoo model is for its own dataset: the config refuses it on digits
    config = _config(standard=entry)
    with pytest.raises(settings.ConfigError, match="cifar10 zoo model cannot classify this run's digits images"):
        settings.validate_config(config)


def test_the_per_model_sns_analyses_run_on_an_external_model(tmp_path, small_weights, digits_files):
    """Targeted sets, per-target sensitivity and importance, layer similarity: the analyses read layers by name
    (the probe's), and the logits as "fc"."""
    from advneurons.sns.importance import targeted_neurons, targeted_pairs
    from advneurons.sns.similarity import importance_report, layer_similarity

    external.import_model("small", _entry(small_weights), "digits", 10, tmp_path / "model.pt", tmp_path / "m.json")
    targeted_pairs(tmp_path / "model.pt", digits_files["test"], {"type": "pgd", "eps": 32, "steps": 3}, 2, 0, 64,
                   tmp_path / "pairs.npz", tmp_path / "pairs.json")
    sens, importance = targeted_neurons(tmp_path / "model.pt", tmp_path / "pairs.npz", 3, 64, tmp_path / "s.csv",
                                        tmp_path / "i.csv", tmp_path / "t.json", site="bn")
    # the pooled features entering the head are the "penultimate" layer, as for the built-in models
    assert list(dict.fromkeys(sens.layer)) == ["stem.0", "block_a", "block_b", "plain", "penultimate", "fc"]
    report = importance_report(tmp_path / "s.csv", tmp_path / "i.csv", 3, tmp_path / "r.csv", tmp_path / "r.md",
                               tmp_path / "rs.csv", tmp_path / "r.png", tmp_path / "r.json")
    assert 0 < len(report) <= 10  # one row per target class the attack reached
    similarity = layer_similarity(tmp_path / "s.csv", 10, tmp_path / "l.csv", tmp_path / "l.md", tmp_path / "l.png",
                                  tmp_path / "l.json")
    assert list(similarity.layer) == ["stem.0", "block_a", "block_b", "plain", "penultimate"]  # no logits, as for VGG


def test_sns_fine_tunes_an_external_model_from_its_own_layers(tmp_path, small_weights, digits_files, monkeypatch):
    """An external model as SNS's base: the training's settings with the entry's layers and lambda; the fine-tuned
    model is an external model again (same network, new weights) with the layers below the first frozen."""
    from advneurons.training.loop import TrainConfig, train_model
    from advneurons.workflow.plan import Plan

    external.import_model("small", _entry(small_weights), "digits", 10, tmp_path / "base.pt", tmp_path / "b.json")
    cfg = TrainConfig(method="sns", base="external", variant="sen", epochs=1, batch_size=64, lr=0.01, eps=32, steps=2,
                      select_images=64, sns_lambda=1.0, sns_layers={"small": ["block_b", "plain"]}, site="bn")
    meta = train_model(digits_files["train"], None, "small", "digits", 1.0, cfg, 0, tmp_path / "sns.pt",
                       tmp_path / "m.csv", tmp_path / "m.json", tmp_path / "resume.pt", base_path=tmp_path / "base.pt")
    assert meta["sns_layers"] == ["block_b", "plain"] and set(meta["stabilised_channels"]) == {"block_b", "plain"}
    tuned, ckpt = load_model(tmp_path / "sns.pt")
    base, _ = load_model(tmp_path / "base.pt")
    assert isinstance(tuned, external.ExternalModel) and ckpt["external"]["name"] == "small"
    assert torch.equal(tuned.network.stem[0].weight, base.network.stem[0].weight)  # frozen below block_b
    assert not torch.equal(tuned.network.plain.weight, base.network.plain.weight)  # fine-tuned
    # in the config: one model per (external model, SNS training), fine-tuned from the imported checkpoint
    monkeypatch.chdir(tmp_path)
    entry = {**_entry(small_weights), "sns": {"training": ["sns_sen"], "layers": ["block_b", "plain"]}}
    with pytest.raises(settings.ConfigError, match="external_models.small.sns.sns_lambda"):
        settings.validate_config(_config(small=entry))  # quick.yaml's sns_sen keeps the papers' per-arch lambda
    entry["sns"]["sns_lambda"] = 5
    plan = Plan(settings.validate_config(_config(small=entry)))
    (tuned_id,) = [m for m, e in plan.defense_models.items() if e["arch"] == "small"]
    (base_id,) = plan.external
    assert settings.base_model_id(plan.config, plan.trained[tuned_id]) == base_id
    assert plan.trained[tuned_id]["training"]["sns_layers"] == {"small": ["block_b", "plain"]}
    assert plan.model_label(tuned_id) == "small-sns_sen" and tuned_id in plan.evaluated
    bad = {**_entry(small_weights), "sns": {"training": ["vanilla"], "layers": ["plain"], "sns_lambda": 1}}
    with pytest.raises(settings.ConfigError, match="'vanilla' is not an SNS training"):
        settings.validate_config(_config(small=bad))


def test_an_external_sns_entry_reads_the_same_whatever_the_training_says_about_what_it_overrides(
        tmp_path, small_weights, monkeypatch):
    """Snakemake compares params as text: a change of the training's lambda, which the external entry overrides,
    must leave the entry's settings identical, key order included (else the model would be retrained)."""
    monkeypatch.chdir(tmp_path)
    entry = {**_entry(small_weights), "sns": {"training": ["sns_sen"], "layers": ["plain"], "sns_lambda": 5}}
    plain = settings.validate_config(_config(small=entry))
    changed = _config(small=entry)
    changed["training"]["sns_sen"]["sns_lambda"] = 1.0
    changed = settings.validate_config(changed)
    a, b = settings.external_sns_entries(plain), settings.external_sns_entries(changed)
    assert list(a) == list(b) and str(a) == str(b)
