import copy
from pathlib import Path

import pytest
import yaml

from advneurons import config as settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_default_config_is_valid_and_gets_defaults(cfg):
    out = settings.validate_config(cfg)
    assert out["training"]["pat"]["clean_weight"] == 0.5
    assert out["dataset"]["cifar10"]["md5"] == "c58f30108f718f92721af3b95e74349a"
    assert out["sensitivity"]["form"] == "tip"


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c.__setitem__("seed", "zero"), "seed"),
        (lambda c: c["training"]["pat"].__setitem__("epochs", 1.5), "training.pat.epochs"),
        (lambda c: c.__setitem__("sed", 1), "<top level>"),
        (lambda c: c["training"]["pat"].__setitem__("epoch", 3), "training.pat"),
        (lambda c: c["attacks"]["pgd"].__setitem__("type", "pgdd"), "attacks.pgd.type"),
        (lambda c: c["attacks"]["pgd"].__setitem__("eps", -8), "attacks.pgd.eps"),
        (lambda c: c["architectures"].__setitem__("vgg19", {"width": 1}), "architectures"),
        (lambda c: c["models"].__setitem__("architectures", ["vgg61"]), "models.architectures.0"),
        (lambda c: c["models"].__setitem__("training", []), "models.training"),
        (lambda c: c["dataset"].__setitem__("name", "mnist"), "dataset.name"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(cfg, mutate, key):
    mutate(cfg)
    with pytest.raises(settings.ConfigError) as err:
        settings.validate_config(cfg)
    assert f"config key '{key}'" in str(err.value)


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["evaluation"].__setitem__("attacks", ["fgsm", "pgd_linf2"]), "evaluation.attacks[1]"),
        (lambda c: c["sensitivity"].__setitem__("attack", "carlini"), "sensitivity.attack"),
        (lambda c: c["models"].__setitem__("training", ["vanilla", "alp"]), "models.training[1]"),
    ],
)
def test_dangling_names_are_rejected(cfg, mutate, key):
    mutate(cfg)
    with pytest.raises(settings.ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        settings.validate_config(cfg)


def test_ids_encode_exactly_their_own_settings(cfg):
    settings.validate_config(cfg)
    models, attacks = settings.model_entries(cfg), settings.attack_entries(cfg)
    assert sorted(m.split("~")[0] for m in models) == ["resnet18-pat", "resnet18-vanilla", "vgg16-pat", "vgg16-vanilla"]
    changed = copy.deepcopy(cfg)
    changed["training"]["pat"]["eps"] = 16
    new_models = settings.model_entries(changed)
    assert {m for m in models if "-vanilla" in m} == {m for m in new_models if "-vanilla" in m}
    assert {m for m in models if "-pat" in m}.isdisjoint(new_models)
    assert settings.attack_entries(changed) == attacks
    changed["training"]["pat"]["eps"] = 32  # undo: the old ids come back
    assert settings.model_entries(changed).keys() == models.keys()
    changed["attacks"]["pgd"]["eps"] = 24
    new_attacks = settings.attack_entries(changed)
    assert [a for a in new_attacks if a.startswith("fgsm")] == [a for a in attacks if a.startswith("fgsm")]
    assert not {a for a in new_attacks if a.startswith("pgd~")} & set(attacks)


def test_param_hash_ignores_key_order():
    assert settings.param_hash({"a": 1, "b": [1, 2]}) == settings.param_hash({"b": [1, 2], "a": 1})
    assert settings.param_hash({"a": 1}) != settings.param_hash({"a": 2})
