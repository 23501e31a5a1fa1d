import copy
from pathlib import Path

import pytest
import yaml

from advneurons.config import settings
from advneurons.models.layer_names import PSN_LAYERS
from tiny_models import tiny_model

ROOT = Path(__file__).resolve().parents[2]


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
        (lambda c: c["dataset"].__setitem__("cifar10", {"batch_md5": {"data_batch_1": "0" * 32}}),
         "dataset.cifar10.batch_md5"),
        (lambda c: c["psn"].__setitem__("bound_method", "alpha-CROWN"), "psn.bound_method"),
        (lambda c: c["psn"].__setitem__("eps", 0), "psn.eps"),
        (lambda c: c["psn"]["n_images"].__setitem__("vgg16", 0), "psn.n_images.vgg16"),
        (lambda c: c["psn"].__setitem__("top_percent", [0]), "psn.top_percent.0"),
        (lambda c: c["psn"]["attack"].__setitem__("sigma", -1), "psn.attack.sigma"),
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
        (lambda c: c["models"].__setitem__("training", ["vanilla", "trades"]), "models.training[1]"),
        (lambda c: c["psn"].__setitem__("training", ["vanilla", "sns"]), "psn.training[1]"),
        (lambda c: c["defenses"].__setitem__("training", ["sns_all"]), "defenses.training[0]"),
        (lambda c: c["meansparse"].__setitem__("training", ["alp"]), "meansparse.training[0]"),
        (lambda c: c["meansparse"].__setitem__("select_on", "fgsm"), "meansparse.select_on"),
        (lambda c: c["meansparse"].__setitem__("alphas", [0.5, 1.0]), "meansparse.alphas"),
        (lambda c: c["training"]["nat"].__setitem__("static", ["vanilla"]), "training.nat.static"),
        (lambda c: c["training"]["eat"].pop("static"), "training.eat.static"),
        (lambda c: c["training"]["eat"].__setitem__("static", ["vanilla", "pretrained"]), "training.eat.static[1]"),
        (lambda c: c["training"]["eat"].__setitem__("static", ["eat"]), "training.eat.static[0]"),
        (lambda c: c["ig_defense"].__setitem__("training", ["nat"]), "ig_defense.training[0]"),
        (lambda c: c["ig_defense"].__setitem__("attacks", ["pgd", "pgd_16"]), "ig_defense.attacks[1]"),
        (lambda c: c["ig_defense"]["analysis"].__setitem__("attack", "pgdd"), "ig_defense.analysis.attack"),
        (lambda c: c["defenses"].__setitem__("transfer", ["pgdd"]), "defenses.transfer[0]"),
        (lambda c: c["defenses"].__setitem__("transfer", ["pgd", "pgd_16"]), "defenses.transfer[1]"),
        # IG-Defense is evaluated under pgd, pgd_l2 and fgsm only: no white-box AutoAttack cell to compare with
        (lambda c: c["defenses"].__setitem__("transfer", ["autoattack"]), "defenses.transfer[0]"),
        (lambda c: c["ig_defense"].__setitem__("eot_samples", 0), "ig_defense.eot_samples"),
        (lambda c: c["ig_defense"].__setitem__("top_percent", 0), "ig_defense.top_percent"),
        (lambda c: c["training"]["sns_sen"].__setitem__("base", "pretrained"), "training.sns_sen.base"),
        (lambda c: c["training"]["sns_sen"].pop("base"), "training.sns_sen.base"),
        (lambda c: c["training"]["pat"].__setitem__("variant", "sen"), "training.pat.variant"),
        (lambda c: c["training"]["pat"].__setitem__("alp_weight", 1.0), "training.pat.alp_weight"),
        (lambda c: c["training"]["sns_sen"].__setitem__("sns_layers", {"vgg16": ["conv8", "fc"]}),
         "training.sns_sen.sns_layers.vgg16[1]"),
        (lambda c: c["training"]["sns_sen"].__setitem__("sns_lambda", {"vgg16": 5}), "training.sns_sen.sns_lambda"),
        (lambda c: c["psn"].__setitem__("n_images", {"vgg16": 2}), "psn.n_images"),
        (lambda c: c["psn"]["heatmaps"]["layers"].__setitem__("vgg16", ["conv14"]), "psn.heatmaps.layers.vgg16[0]"),
        (lambda c: c["psn"]["heatmaps"]["layers"].__setitem__("resnet18", ["l4b2c2"]), "psn.heatmaps.layers.resnet18[0]"),
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


def test_psn_layer_names_are_the_models_scored_layers():
    from advneurons.psn.scores import scored_layers

    for nodes, by_arch in PSN_LAYERS.items():
        for arch, names in by_arch.items():
            assert list(scored_layers(tiny_model(arch), nodes)) == names, (nodes, arch)


def test_heatmap_nodes_are_checked_against_the_node_set(cfg):
    cfg["psn"]["heatmaps"]["layers"] = {"vgg16": ["conv13.relu", "pool4"]}
    with pytest.raises(settings.ConfigError, match=r"psn.heatmaps.layers.vgg16\[0\].*psn.nodes=relu_inputs"):
        settings.validate_config(copy.deepcopy(cfg))
    cfg["psn"]["nodes"] = "all"
    settings.validate_config(copy.deepcopy(cfg))
    cfg["psn"]["heatmaps"]["layers"] = {"vgg16": ["flatten"]}
    with pytest.raises(settings.ConfigError, match="no spatial feature map"):
        settings.validate_config(copy.deepcopy(cfg))


def test_psn_ids_separate_scores_from_their_analyses(cfg):
    settings.validate_config(cfg)
    vgg, resnet = (next(m for m in settings.model_entries(cfg).values() if m["arch"] == a) for a in ("vgg16", "resnet18"))
    ids = settings.psn_ids(cfg, vgg)
    assert settings.psn_ids(cfg, resnet)["scores"] != ids["scores"]  # different numbers of images
    changed = copy.deepcopy(cfg)
    changed["psn"]["mem_budget_mb"] = 64  # chunking only: same results, same paths
    assert settings.psn_ids(changed, vgg) == ids
    changed["psn"]["deviation"]["pgd_steps"] = 7
    new = settings.psn_ids(changed, vgg)
    assert new["scores"] == ids["scores"] and new["attack"] == ids["attack"]
    assert new["deviation"] != ids["deviation"] and new["heatmaps"] != ids["heatmaps"]  # heatmaps show PGD too
    changed["psn"]["bound_method"] = "CROWN-IBP"
    assert settings.psn_ids(changed, vgg)["scores"] != ids["scores"]


def test_fine_tuned_models_hash_their_base(cfg):
    settings.validate_config(cfg)
    defenses = settings.defense_entries(cfg)
    assert sorted(m.split("~")[0] for m in defenses) == sorted(f"{a}-sns_sen" for a in ("vgg16", "resnet18"))
    cfg["defenses"]["training"] = ["alp", "nat", "eat", "sns_sen"]  # defined in config.yaml, run by the preset
    defenses = settings.defense_entries(cfg)
    assert len(defenses) == 8
    sns = {m: e for m, e in defenses.items() if e["training_name"] == "sns_sen"}
    vanilla = {e["arch"]: m for m, e in settings.model_entries(cfg).items() if e["training_name"] == "vanilla"}
    for entry in sns.values():
        assert settings.base_model_id(cfg, entry) == vanilla[entry["arch"]]
    changed = copy.deepcopy(cfg)
    eat = {m: e for m, e in defenses.items() if e["training_name"] == "eat"}
    for entry in eat.values():  # EAT's static sources: the vanilla models of every architecture
        assert settings.static_model_ids(cfg, entry) == [vanilla["vgg16"], vanilla["resnet18"]]
    changed = copy.deepcopy(cfg)
    changed["training"]["vanilla"]["epochs"] = 3  # new base/source models: new SNS and EAT models, same ALP / NAT
    new = settings.defense_entries(changed)
    assert set(new) & set(defenses) == {m for m in defenses if "-sns_sen" not in m and "-eat" not in m}
