"""Configuration: schema validation with defaults, cross-reference checks, and parameter-encoding ids.

Every output path carries an id of the form ``<readable name>~<hash>`` where the hash covers exactly the
settings that produce that output (upstream settings are covered by the parent directories). Changing a
setting yields a new path, so only dependent jobs run; undoing the change points back at the old results.
"""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from pathlib import Path

import yaml

from advneurons.models.layer_names import CONV_LAYERS, PSN_LAYERS, SNS_LAYERS

SCHEMA_FILE = "schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


def schema_path() -> Path:
    return Path(str(resources.files("advneurons.config") / SCHEMA_FILE))


def load_schema() -> dict:
    return yaml.safe_load(schema_path().read_text())


def _extend_with_defaults(validator_class):
    """A validator that fills in schema defaults while it validates (as snakemake.utils.validate does)."""
    from jsonschema import validators

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


def _path_of(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate_config(config: dict) -> dict:
    """Validate against the schema (filling defaults in place), then check cross-references.

    Raises ConfigError naming the key at fault. Returns the same dict for convenience.
    """
    from jsonschema import Draft202012Validator

    validator = _extend_with_defaults(Draft202012Validator)(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"config key '{_path_of(e)}': {e.message}" for e in errors[:10]]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    check_references(config)
    _sns_site_from_sensitivity(config)
    return config


def _sns_site_from_sensitivity(config: dict) -> None:
    """An SNS training without its own `site` chooses and stabilises channels where the run measures
    sensitivity (sensitivity.site), so the channels it stabilises are the ones the analyses call sensitive.
    Filled in like a schema default, so the site is part of the model's settings and of its id."""
    site = config["sensitivity"]["site"]
    for training in config["training"].values():
        if training["method"] == "sns":
            training.setdefault("site", site)


def check_references(config: dict) -> None:
    """Checks a JSON schema cannot express: names that must refer to entries defined elsewhere."""
    attacks = config["attacks"]
    for i, name in enumerate(config["evaluation"]["attacks"]):
        if name not in attacks:
            raise ConfigError(f"config key 'evaluation.attacks[{i}]': attack {name!r} is not defined under 'attacks' "
                              f"(defined: {', '.join(sorted(attacks))})")
    sens_attack = config["sensitivity"]["attack"]
    if sens_attack not in attacks:
        raise ConfigError(f"config key 'sensitivity.attack': attack {sens_attack!r} is not defined under 'attacks'")
    robustness = config.get("robustness", {})
    for label, name in robustness.get("table_iii", {}).items():
        _check_attack(attacks, name, f"robustness.table_iii.{label}")
    for i, name in enumerate(robustness.get("table_i", [])):
        _check_attack(attacks, name, f"robustness.table_i[{i}]")
    for name in robustness.get("n_images_by_attack", {}):
        _check_attack(attacks, name, f"robustness.n_images_by_attack.{name}")
    sns = config.get("sns", {})
    if sns.get("enabled", False):
        _check_attack(attacks, sns["targeted"]["attack"], "sns.targeted.attack")
        if attacks[sns["targeted"]["attack"]]["type"] not in ("pgd", "pgd_targeted"):
            raise ConfigError("config key 'sns.targeted.attack': targeted sets need an L-inf PGD attack "
                              f"(type pgd or pgd_targeted), not {attacks[sns['targeted']['attack']]['type']!r}")
        for i, name in enumerate(sns["suppression"]["perturbations"]):
            _check_attack(attacks, name, f"sns.suppression.perturbations[{i}]")
        for i, name in enumerate(sns["suppression"]["training"]):
            if name not in config["models"]["training"]:
                raise ConfigError(f"config key 'sns.suppression.training[{i}]': {name!r} is not in models.training")
        families = sns["ratios"]["perturbations"]
        if families and sns["ratios"]["table_family"] not in families:
            raise ConfigError(f"config key 'sns.ratios.table_family': {sns['ratios']['table_family']!r} is not a "
                              f"family under sns.ratios.perturbations ({', '.join(families)})")
    psn = config.get("psn", {})
    if psn.get("enabled", False):
        _check_psn(psn, config)
    for i, name in enumerate(config["models"]["training"]):
        if name not in config["training"]:
            raise ConfigError(f"config key 'models.training[{i}]': training {name!r} is not defined under 'training'")
    for i, name in enumerate(config.get("defenses", {}).get("training", [])):
        if name not in config["training"]:
            raise ConfigError(f"config key 'defenses.training[{i}]': training {name!r} is not defined under 'training'")
    for name, training in config["training"].items():
        if name == "external":  # model ids "<name>-external~..." are the external models' (rule import_model)
            raise ConfigError("config key 'training.external': the name 'external' is reserved for external models")
        _check_training(config, name, training)
    layer_range = config.get("sns_layer_range", {})
    if layer_range.get("enabled", False):
        _check_sns_layer_range(layer_range, config)
    ms = config.get("meansparse", {})
    if ms.get("enabled", False):
        known = set(config["models"]["training"]) | set(config.get("defenses", {}).get("training", []))
        for i, name in enumerate(ms["training"]):
            if name not in known:
                raise ConfigError(f"config key 'meansparse.training[{i}]': {name!r} is neither in models.training "
                                  "nor in defenses.training")
        for i, name in enumerate(ms["attacks"]):
            _check_attack(attacks, name, f"meansparse.attacks[{i}]")
        if ms["select_on"] not in ms["attacks"]:
            raise ConfigError(f"config key 'meansparse.select_on': {ms['select_on']!r} is not in meansparse.attacks")
        if 0 not in ms["alphas"]:
            raise ConfigError("config key 'meansparse.alphas': include 0 (the undefended model) to measure the clean drop")
    ig = config.get("ig_defense", {})
    if ig.get("enabled", False):
        _check_ig_defense(ig, config)
    _check_transfer(config)
    _check_external(config)
    for i, name in enumerate(config["models"]["architectures"]):
        if name not in config["architectures"]:
            raise ConfigError(f"config key 'models.architectures[{i}]': {name!r} is not defined under 'architectures'")


def _check_external(config: dict) -> None:
    """External models: names that do not clash with the trained architectures, a zoo entry of the run's dataset,
    and a full check of each (factory imports, weights file present, loadable with weights_only=True, matching the
    network, outputs of the dataset's 10 classes), so a bad entry fails before any job runs. The full check is
    cached per entry and weights file (advneurons.models.external.verify_cached): re-parsing the workflow (every
    SLURM job does) does not rebuild the model."""
    for name, entry in config.get("external_models", {}).items():
        from advneurons.models.external import ExternalModelError, verify_cached  # torch: only when there are any

        key = f"external_models.{name}"
        if name in config["architectures"] or name in ("vgg16", "resnet18"):
            raise ConfigError(f"config key '{key}': {name!r} is the name of a built-in architecture; rename it")
        zoo = entry["source"].get("robustbench")
        if zoo is not None and zoo.get("dataset", "cifar10") != config["dataset"]["name"]:
            raise ConfigError(f"config key '{key}.source.robustbench.dataset': a {zoo.get('dataset', 'cifar10')} zoo "
                              f"model cannot classify this run's {config['dataset']['name']} images")
        try:
            psn = config.get("psn", {})
            node_set = entry["psn"].get("nodes", psn.get("nodes")) if psn.get("enabled") and entry.get("psn") else None
            verify_cached(name, entry, num_classes=10, psn_nodes=node_set)
        except ExternalModelError as exc:
            raise ConfigError(f"config key '{key}': {exc}") from exc
        for i, train_name in enumerate((entry.get("sns") or {}).get("training", [])):
            training = config["training"].get(train_name)
            if training is None or training["method"] != "sns":
                raise ConfigError(f"config key '{key}.sns.training[{i}]': {train_name!r} is not an SNS training "
                                  "defined under 'training'")
            if not isinstance(training.get("sns_lambda"), (int, float)) and "sns_lambda" not in entry["sns"]:
                raise ConfigError(f"config key '{key}.sns.sns_lambda': training {train_name!r} sets lambda per "
                                  "built-in architecture (or not at all); give this model's")


def external_sns_entries(config: dict) -> dict[str, dict]:
    """model id -> entry (like :func:`model_entries`', plus base_id) of every SNS fine-tuning of an external model
    (external_models.<name>.sns): the training's settings with the entry's layers (and lambda, when given); the id
    hashes them and the external entry it starts from."""
    out = {}
    for base_id, base in external_entries(config).items():
        sns = base["external"].get("sns")
        if not sns:
            continue
        for train_name in sns["training"]:
            training = {**config["training"][train_name], "sns_layers": {base["arch"]: list(sns["layers"])}}
            training["base"] = f"external:{base['arch']}"  # a name only: the base checkpoint is base_id's
            if "sns_lambda" in sns:
                training["sns_lambda"] = sns["sns_lambda"]
            # Snakemake compares params by their text, key order included: the same settings must read the same
            # whether the training entry set the overridden lambda or not
            training = {k: training[k] for k in sorted(training)}
            params = {"arch": base["arch"], "width": 1.0, "training": training, "seed": config["seed"],
                      "base": {"external": external_identity(base["external"])}}
            out[make_id(f"{base['arch']}-{train_name}", params)] = {**params, "training_name": train_name,
                                                                      "base_id": base_id}
    return out


EXTERNAL_IDENTITY = ("source", "normalization", "layers")


def external_identity(entry: dict) -> dict:
    """What makes an external model entry the model it is (source with weights path, normalisation, analysed
    layers), not what the run does with it (meansparse, ig_defense, sns, psn): turning an analysis on or off must not
    re-import the model nor re-run what was computed on it."""
    return {k: entry.get(k) for k in EXTERNAL_IDENTITY}


def external_entries(config: dict) -> dict[str, dict]:
    """model id -> {arch (the entry's name), training_name "external", training {method: external}, external (the
    entry), seed} for every external model; the id hashes the entry's identity (:func:`external_identity`)."""
    out = {}
    for name, entry in config.get("external_models", {}).items():
        out[make_id(f"{name}-external", {"external": external_identity(entry)})] = {
            "arch": name, "training_name": "external", "training": {"method": "external"}, "external": entry,
            "seed": config["seed"],
        }
    return out


SNS_ONLY = ("base", "variant", "sns_lambda", "sns_layers", "top_percent", "select_images", "dyn_images", "repeat",
            "site")


def _check_training(config: dict, name: str, training: dict) -> None:
    key = f"training.{name}"
    method = training["method"]
    # Method-specific settings have no schema defaults (advneurons.training.loop.TrainConfig holds them), so
    # that adding them did not change the ids of existing models; a setting of another method is an error.
    if method != "alp" and "alp_weight" in training:
        raise ConfigError(f"config key '{key}.alp_weight': only method alp uses it")
    if method != "eat" and "static" in training:
        raise ConfigError(f"config key '{key}.static': only method eat uses it")
    if method == "eat":
        if not training.get("static"):
            raise ConfigError(f"config key '{key}.static': EAT needs the trainings of its static source models")
        for i, source in enumerate(training["static"]):
            if source not in config["training"]:
                raise ConfigError(f"config key '{key}.static[{i}]': training {source!r} is not defined under 'training'")
            if config["training"][source]["method"] == "eat":
                raise ConfigError(f"config key '{key}.static[{i}]': {source!r} is itself an EAT training; static "
                                  "source models must be trained without other models")
    if method != "sns":
        for field in SNS_ONLY:
            if field in training:
                raise ConfigError(f"config key '{key}.{field}': only SNS fine-tuning (method sns) uses it")
        return
    base = training.get("base")
    if not base:
        raise ConfigError(f"config key '{key}.base': SNS fine-tuning needs the training whose model it starts from")
    if base not in config["training"]:
        raise ConfigError(f"config key '{key}.base': training {base!r} is not defined under 'training'")
    if config["training"][base]["method"] == "sns":
        raise ConfigError(f"config key '{key}.base': {base!r} is itself an SNS fine-tuning")
    lam = training.get("sns_lambda")
    if isinstance(lam, dict):
        for arch in config["models"]["architectures"]:
            if arch not in lam:
                raise ConfigError(f"config key '{key}.sns_lambda': no lambda for architecture {arch!r}")
    for arch, layers in (training.get("sns_layers") or {}).items():
        if arch not in CONV_LAYERS:
            raise ConfigError(f"config key '{key}.sns_layers.{arch}': unknown architecture")
        for i, layer in enumerate(layers):
            if layer not in CONV_LAYERS[arch]:
                raise ConfigError(f"config key '{key}.sns_layers.{arch}[{i}]': {layer!r} is not a conv layer of {arch}")


def _check_psn(psn: dict, config: dict) -> None:
    for i, name in enumerate(psn["training"]):
        if name not in config["models"]["training"]:
            raise ConfigError(f"config key 'psn.training[{i}]': {name!r} is not in models.training")
    for arch in config["models"]["architectures"]:
        if arch not in psn["n_images"]:
            raise ConfigError(f"config key 'psn.n_images': no number of images for architecture {arch!r}")
    known = PSN_LAYERS[psn["nodes"]]
    if psn.get("last_nodes"):  # only the last k nodes are scored, so only they can be analysed
        known = {arch: names[-psn["last_nodes"]:] for arch, names in known.items()}
    for arch, layers in psn["heatmaps"]["layers"].items():
        if arch not in known:
            raise ConfigError(f"config key 'psn.heatmaps.layers.{arch}': unknown architecture "
                              f"(known: {', '.join(known)})")
        for i, layer in enumerate(layers):
            if layer not in known[arch]:
                limit = f" and psn.last_nodes={psn['last_nodes']}" if psn.get("last_nodes") else ""
                raise ConfigError(f"config key 'psn.heatmaps.layers.{arch}[{i}]': {layer!r} is not a node that "
                                  f"psn.nodes={psn['nodes']}{limit} scores in {arch} ({', '.join(known[arch])})")
            if layer in ("flatten",) or layer.startswith("fc"):
                raise ConfigError(f"config key 'psn.heatmaps.layers.{arch}[{i}]': {layer!r} has no spatial feature "
                                  "map for Grad-CAM; choose a conv, BatchNorm, ReLU, pooling or residual node")


def _check_ig_defense(ig: dict, config: dict) -> None:
    known = set(config["models"]["training"]) | set(config.get("defenses", {}).get("training", []))
    for i, name in enumerate(ig["training"]):
        if name not in known:
            raise ConfigError(f"config key 'ig_defense.training[{i}]': {name!r} is neither in models.training "
                              "nor in defenses.training")
    table = list(config.get("robustness", {}).get("table_iii", {}).values())
    for i, name in enumerate(ig["attacks"] or []):
        if name not in table:
            raise ConfigError(f"config key 'ig_defense.attacks[{i}]': {name!r} is not an attack of robustness.table_iii "
                              f"({', '.join(table)})")
    _check_attack(config["attacks"], ig["analysis"]["attack"], "ig_defense.analysis.attack")


def _check_transfer(config: dict) -> None:
    """defenses.transfer: attacks every defended model is evaluated under (a white-box cell to compare with)."""
    table = list(config.get("robustness", {}).get("table_iii", {}).values())
    ig = config.get("ig_defense", {})
    for i, name in enumerate(config.get("defenses", {}).get("transfer", [])):
        key = f"defenses.transfer[{i}]"
        _check_attack(config["attacks"], name, key)
        if name not in table:
            raise ConfigError(f"config key '{key}': {name!r} is not an attack of robustness.table_iii "
                              f"({', '.join(table)}); the check compares with its white-box cell")
        if ig.get("enabled", False) and ig.get("attacks") is not None and name not in ig["attacks"]:
            raise ConfigError(f"config key '{key}': IG-Defense is not evaluated under {name!r} (ig_defense.attacks: "
                              f"{', '.join(ig['attacks'])}), so there is no white-box cell to compare with")


def _check_sns_layer_range(layer_range: dict, config: dict) -> None:
    name = layer_range["training"]
    if name not in config.get("defenses", {}).get("training", []):
        raise ConfigError(f"config key 'sns_layer_range.training': {name!r} is not in defenses.training")
    if config["training"][name]["method"] != "sns":
        raise ConfigError(f"config key 'sns_layer_range.training': {name!r} is not an SNS training (method sns)")
    for arch in config["models"]["architectures"]:
        firsts = layer_range["first_layers"].get(arch)
        if not firsts:
            raise ConfigError(f"config key 'sns_layer_range.first_layers': no first layers for architecture {arch!r}")
        for i, layer in enumerate(firsts):
            if layer not in CONV_LAYERS[arch]:
                raise ConfigError(f"config key 'sns_layer_range.first_layers.{arch}[{i}]': {layer!r} is not a conv "
                                  f"layer of {arch} ({', '.join(CONV_LAYERS[arch])})")
    for i, attack in enumerate(layer_range["attacks"]):
        _check_attack(config["attacks"], attack, f"sns_layer_range.attacks[{i}]")


def _check_attack(attacks: dict, name: str, key: str) -> None:
    if name not in attacks:
        raise ConfigError(f"config key '{key}': attack {name!r} is not defined under 'attacks' "
                          f"(defined: {', '.join(sorted(attacks))})")


# ------------------------------------------------------------------------------------------------ ids
def param_hash(params) -> str:
    """Eight hex digits that change whenever any value in `params` changes (key order is irrelevant)."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def make_id(name: str, params) -> str:
    return f"{name}~{param_hash(params)}"


def dataset_params(config: dict) -> dict:
    """The settings that determine the split files."""
    ds = config["dataset"]
    params = {"name": ds["name"], "split_seed": ds["split_seed"], "val_fraction": ds["val_fraction"]}
    if ds["name"] == "digits":
        params["test_fraction"] = ds["test_fraction"]
    else:  # CIFAR-10 has an official test set; the archive's checksum pins its content
        params["md5"] = ds["cifar10"]["md5"]
        if ds["cifar10"].get("batch_md5"):  # an extracted folder of other than the official batches
            params["batch_md5"] = ds["cifar10"]["batch_md5"]
    max_images = {k: v for k, v in ds.get("max_images", {}).items() if v is not None}
    if max_images:  # a rehearsal's subset; whole splits keep the ids they always had
        params["max_images"] = max_images
    return params


def _model_params(config: dict, arch: str, train_name: str) -> dict:
    """The settings that determine one model; a fine-tuned model (SNS) includes its base model's."""
    training = config["training"][train_name]
    if config.get("precision", "fp32") != "fp32":  # fp32 runs keep the ids they always had
        training = {**training, "precision": config["precision"]}
    params = {
        "arch": arch,
        "width": config["architectures"][arch]["width"],
        "training": training,
        "seed": config["seed"],
    }
    if training.get("base"):
        params["base"] = _model_params(config, arch, training["base"])
    if training.get("static"):  # EAT: retraining a source model retrains the EAT model
        params["static"] = {model_id: p for model_id, p in _static_models(config, training["static"])}
    return params


def _static_models(config: dict, names) -> list[tuple[str, dict]]:
    """(id, settings) of EAT's static source models: each named training on every architecture of the run."""
    out = []
    for name in names:
        for arch in config["models"]["architectures"]:
            params = _model_params(config, arch, name)
            out.append((make_id(f"{arch}-{name}", params), params))
    return out


def static_model_ids(config: dict, entry: dict) -> list[str]:
    """Ids of the static source models of an EAT entry (empty for other methods)."""
    return [model_id for model_id, _ in _static_models(config, entry["training"].get("static") or [])]


def _entries(config: dict, training_names) -> dict[str, dict]:
    out = {}
    for arch in config["models"]["architectures"]:
        for train_name in training_names:
            params = _model_params(config, arch, train_name)
            out[make_id(f"{arch}-{train_name}", params)] = {**params, "training_name": train_name}
    return out


def model_entries(config: dict) -> dict[str, dict]:
    """model id -> {arch, width, training name, training settings, seed[, base]} for every analysed model
    (models.training: every stage of the DAG runs on them)."""
    return _entries(config, config["models"]["training"])


def defense_entries(config: dict) -> dict[str, dict]:
    """Like :func:`model_entries` for the defense models (defenses.training) that are not analysed models:
    trained, evaluated in the final robustness tables, measured for the sensitivity figure."""
    names = [n for n in config.get("defenses", {}).get("training", []) if n not in config["models"]["training"]]
    return _entries(config, names)


def sns_layer_range_models(config: dict) -> list[dict]:
    """The models of the SNS layer-range sweep, one per (architecture, first stabilised layer), in order:
    {model_id, arch, first_layer, layers, entry}. `entry` is None for the range of the swept training itself
    (its model is the defense model of that training); otherwise the settings of an extra fine-tuning."""
    sweep = config.get("sns_layer_range", {})
    if not sweep.get("enabled", False):
        return []
    name = sweep["training"]
    training = config["training"][name]
    out = []
    for arch in config["models"]["architectures"]:
        own = list((training.get("sns_layers") or {}).get(arch) or SNS_LAYERS[arch])
        order = CONV_LAYERS[arch]
        for first in sorted(sweep["first_layers"][arch], key=order.index):
            layers = order[order.index(first):]
            if layers == own:
                params = _model_params(config, arch, name)
                out.append({"model_id": make_id(f"{arch}-{name}", params), "arch": arch, "first_layer": first,
                            "layers": layers, "entry": None})
                continue
            variant = {**training, "sns_layers": {arch: layers}}
            train_name = f"{name}_from_{first}"
            params = {"arch": arch, "width": config["architectures"][arch]["width"], "training": variant,
                      "seed": config["seed"], "base": _model_params(config, arch, training["base"])}
            out.append({"model_id": make_id(f"{arch}-{train_name}", params), "arch": arch, "first_layer": first,
                        "layers": layers, "entry": {**params, "training_name": train_name}})
    return out


def sns_layer_range_entries(config: dict) -> dict[str, dict]:
    """model id -> settings of the extra fine-tunings of the SNS layer-range sweep (trained like defense models)."""
    return {m["model_id"]: m["entry"] for m in sns_layer_range_models(config) if m["entry"] is not None}


def meansparse_entries(config: dict) -> dict[str, dict]:
    """defended model id -> {arch, training_name, training, base_id, settings} for every model that gets
    MeanSparse; the id hashes the base model's settings and the MeanSparse settings."""
    ms = config["meansparse"]
    if not ms["enabled"]:
        return {}
    settings = {k: ms[k] for k in ("alphas", "select_on", "max_clean_drop", "n_val")}
    settings["attacks"] = {name: config["attacks"][name] for name in ms["attacks"]}
    out = {}
    for arch in config["models"]["architectures"]:
        for train_name in ms["training"]:
            base = _model_params(config, arch, train_name)
            base_id = make_id(f"{arch}-{train_name}", base)
            name = f"{train_name}_meansparse"
            out[make_id(f"{arch}-{name}", {"base": base, "meansparse": settings, "seed": config["seed"]})] = {
                "arch": arch, "training_name": name, "training": {"method": "meansparse"},
                "base_id": base_id, "settings": settings, "seed": config["seed"],
            }
    return {**out, **_external_defended(config, "meansparse", "meansparse", settings)}


def _external_defended(config: dict, method: str, suffix: str, settings: dict) -> dict[str, dict]:
    """Defended-model entries of the external models whose entry turns `method` on (key `method`: true); ids and
    fields as for the trained models' (meansparse_entries, ig_defense_entries)."""
    out = {}
    for base_id, entry in external_entries(config).items():
        if entry["external"].get(method):
            name = f"external_{suffix}"
            params = {"base": {"external": external_identity(entry["external"])}, method: settings, "seed": config["seed"]}
            out[make_id(f"{entry['arch']}-{name}", params)] = {
                "arch": entry["arch"], "training_name": name, "training": {"method": method},
                "base_id": base_id, "settings": settings, "seed": config["seed"],
            }
    return out


IG_DEFENSE_SETTINGS = ("top_percent", "noise_std", "temperature", "eot_samples", "n_train")


def ig_defense_entries(config: dict) -> dict[str, dict]:
    """Like :func:`meansparse_entries` for IG-Defense; the id hashes the base model's settings and the
    settings that shape the defended model (not which attacks evaluate it)."""
    ig = config["ig_defense"]
    if not ig["enabled"]:
        return {}
    settings = {k: ig[k] for k in IG_DEFENSE_SETTINGS}
    out = {}
    for arch in config["models"]["architectures"]:
        for train_name in ig["training"]:
            base = _model_params(config, arch, train_name)
            name = f"{train_name}_igdefense"
            out[make_id(f"{arch}-{name}", {"base": base, "ig_defense": settings, "seed": config["seed"]})] = {
                "arch": arch, "training_name": name, "training": {"method": "ig_defense"},
                "base_id": make_id(f"{arch}-{train_name}", base), "settings": settings, "seed": config["seed"],
            }
    return {**out, **_external_defended(config, "ig_defense", "igdefense", settings)}


def display_group(training_name: str, training: dict) -> str:
    """Display group of a training entry in the final table: repeats of SNS-rand (differing only in
    ``repeat``) share one."""
    if training.get("method") == "sns" and training.get("variant") == "rand":
        return f"sns-rand (base {training.get('base')})"
    return training_name


def evaluated_attacks(config: dict, entry: dict) -> list[str]:
    """Names of the robustness.table_iii attacks a model of the final table is evaluated under."""
    table = list(dict.fromkeys(config["robustness"]["table_iii"].values()))
    if entry["training"]["method"] == "ig_defense" and config["ig_defense"]["attacks"] is not None:
        chosen = set(config["ig_defense"]["attacks"])
        return [name for name in table if name in chosen]
    return table


def transfer_attacks(config: dict) -> list[str]:
    """Attacks of the transfer check (defenses.transfer); none when the final table is off."""
    defenses = config.get("defenses", {})
    return list(defenses.get("transfer", [])) if defenses.get("final_table", True) else []


def ig_analysis_id(config: dict) -> str:
    """Id of the IG-Defense analysis settings (attack entry, images, seed)."""
    analysis = config["ig_defense"]["analysis"]
    return make_id("analysis", {"attack": config["attacks"][analysis["attack"]], "n_images": analysis["n_images"],
                                "seed": config["seed"]})


def base_model_id(config: dict, entry: dict) -> str | None:
    """Id of the model a fine-tuned entry starts from (None when trained from scratch)."""
    if entry.get("base_id"):  # an external model's SNS fine-tuning
        return entry["base_id"]
    base = entry["training"].get("base")
    if not base:
        return None
    return make_id(f"{entry['arch']}-{base}", _model_params(config, entry["arch"], base))


def attack_entries(config: dict) -> dict[str, dict]:
    """attack id -> {attack settings, n_images, seed} for every defined attack."""
    out = {}
    for name, attack in config["attacks"].items():
        params = {"attack": attack, "n_images": config["evaluation"]["n_images"], "seed": config["seed"]}
        out[make_id(name, params)] = {**params, "name": name}
    return out


def robustness_attack_names(config: dict) -> list[str]:
    """Attacks the robustness tables need, each once, in table order."""
    rob = config["robustness"]
    return list(dict.fromkeys([*rob["table_iii"].values(), *rob["table_i"]]))


def robustness_entries(config: dict) -> dict[str, dict]:
    """evaluation id -> {name, attack settings, n_images, seed} for every attack the tables need."""
    rob = config["robustness"]
    out = {}
    for name in robustness_attack_names(config):
        n_images = rob["n_images_by_attack"].get(name, rob["n_images"])
        params = {"attack": config["attacks"][name], "n_images": n_images, "seed": config["seed"]}
        if config.get("precision", "fp32") != "fp32":
            params["precision"] = config["precision"]
        out[make_id(name, params)] = {**params, "name": name}
    return out


def sweep_id(config: dict) -> str:
    sweeps = {k: v for k, v in config["sweeps"].items() if k not in ("enabled", "batch_size")}
    return make_id("pgd_sweep", {**sweeps, "seed": config["seed"]})


def sns_ids(config: dict) -> dict[str, str]:
    """Ids of the SNS analysis outputs: each hashes exactly the settings it depends on."""
    sns, seed = config["sns"], config["seed"]
    targeted = sns["targeted"]
    sup = sns["suppression"]
    return {
        "targeted": make_id("targeted", {"attack": config["attacks"][targeted["attack"]],
                                         "n_per_class": targeted["n_per_class"], "seed": seed}),
        "suppression": make_id("suppression", {
            "perturbations": {name: config["attacks"][name] for name in sup["perturbations"]},
            **{k: sup[k] for k in ("betas", "top_percent", "n_random", "n_images")}, "seed": seed}),
        "ratios": make_id("ratios", {"perturbations": sns["ratios"]["perturbations"],
                                     "n_images": sns["ratios"]["n_images"], "seed": seed}),
    }


def heatmap_settings(config: dict) -> dict:
    """Focus heatmaps: their own settings and the PGD of the activation-deviation study (the PGD row)."""
    psn = config["psn"]
    pgd = {k: psn["deviation"][k] for k in ("pgd_eps", "pgd_step", "pgd_steps")}
    return {k: v for k, v in psn["heatmaps"].items() if k != "layers"} | pgd


def psn_images(config: dict, model: dict) -> int | None:
    """How many images PSN scores for a model entry: the external entry's own `psn.n_images`, else the
    architecture's of `psn.n_images`."""
    if "external" in model:
        return model["external"]["psn"]["n_images"]
    return config["psn"]["n_images"][model["arch"]]


def psn_node_set(config: dict, model: dict) -> str:
    """The PSN node set of a model entry: the external entry's own `psn.nodes` when it sets one, else `psn.nodes`."""
    if "external" in model:
        return model["external"]["psn"].get("nodes", config["psn"]["nodes"])
    return config["psn"]["nodes"]


def psn_heatmap_layers(config: dict, model: dict) -> list[str]:
    """The nodes whose PSN units get focus heatmaps: the external entry's `psn.heatmap_layers`, else the
    architecture's of `psn.heatmaps.layers`."""
    if "external" in model:
        return list(model["external"]["psn"].get("heatmap_layers", []))
    return list(config["psn"]["heatmaps"]["layers"].get(model["arch"], []))


def psn_ids(config: dict, model: dict) -> dict[str, str]:
    """Ids of the PSN outputs of one model (an entry of :func:`model_entries`): the scores hash the
    bound settings and the images scored; each analysis hashes its own settings."""
    psn, seed = config["psn"], config["seed"]
    scores = {k: psn[k] for k in ("bound_method", "variant", "eps", "zscore")} | {"nodes": psn_node_set(config, model)}
    if psn.get("last_nodes"):  # a rehearsal's count; runs over every node keep the ids they always had
        scores["last_nodes"] = psn["last_nodes"]
    return {
        "scores": make_id("psn", {**scores, "n_images": psn_images(config, model), "seed": seed}),
        "deviation": make_id("deviation", {**psn["deviation"], "seed": seed}),
        "attack": make_id("noise", {**psn["attack"], "seed": seed}),
        "heatmaps": make_id("heatmaps", {**heatmap_settings(config), "seed": seed}),
    }


def load_config(path: Path) -> dict:
    with open(path) as fh:
        config = yaml.safe_load(fh) or {}
    return validate_config(config)
