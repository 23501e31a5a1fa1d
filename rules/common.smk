# Config validation, the parameter-encoding ids that name every output, and input/param helpers.
# Every id is "<readable name>~<hash of the settings that produce it>" (advneurons.config), so a changed
# setting gets new paths and re-runs only what depends on it; undoing it points back at old results.

from snakemake.utils import min_version

from advneurons import config as settings
from advneurons.provenance import code_fingerprint

min_version("9.0")


# Fills schema defaults in place and names the offending key on error, before any job is scheduled.
settings.validate_config(config)

DATASET = config["dataset"]["name"]
DATA_ID = settings.make_id(DATASET, settings.dataset_params(config))
MODELS = settings.model_entries(config)
ATTACKS = settings.attack_entries(config)
ATTACK_ID = {entry["name"]: attack_id for attack_id, entry in ATTACKS.items()}
SENSITIVITY_FORM = config["sensitivity"]["form"]
CIFAR10_ARCHIVE = os.path.join(
    config["dataset"]["cifar10"]["data_dir"], "cifar-10-python.tar.gz"
)


wildcard_constraints:
    data=r"[a-z0-9]+~[0-9a-f]{8}",
    model=r"[a-z0-9]+-[a-z0-9_]+~[0-9a-f]{8}",
    attack=r"[a-z0-9_]+~[0-9a-f]{8}",
    form=r"tip|eccv",
    percent=r"[0-9]+(\.[0-9]+)?",


def code_version(module):
    """Fingerprint of the package code behind a step; editing that code re-runs the step (provenance.py)."""
    return code_fingerprint(f"advneurons.{module}")


def split_file(split):
    return f"results/{{data}}/data/{split}.npz"


def dataset_inputs(wildcards):
    """The CIFAR-10 archive when that dataset is configured; digits ship with scikit-learn."""
    return {"archive": CIFAR10_ARCHIVE} if DATASET == "cifar10" else {}


def dataset_settings(wildcards):
    return settings.dataset_params(config) | {
        "test_fraction": config["dataset"]["test_fraction"]
    }


def model_settings(wildcards):
    return MODELS[wildcards.model]


def attack_settings(wildcards):
    return ATTACKS[wildcards.attack]


def model_path(model_id):
    return f"results/{DATA_ID}/models/{model_id}/model.pt"


def pairs_path(model_id, attack_id):
    return f"results/{DATA_ID}/pairs/{model_id}/{attack_id}/pairs.npz"


def evaluation_pairs():
    return [
        pairs_path(model_id, ATTACK_ID[name])
        for model_id in MODELS
        for name in config["evaluation"]["attacks"]
    ]


def robustness_entries(wildcards):
    """What the table needs to label each pair set, in the order of evaluation_pairs()."""
    return [
        {
            "model": f"{entry['arch']}-{entry['training_name']}",
            "arch": entry["arch"],
            "training": entry["training_name"],
            "attack": name,
            "attack_settings": config["attacks"][name],
        }
        for entry in MODELS.values()
        for name in config["evaluation"]["attacks"]
    ]


def sensitivity_outputs():
    attack_id = ATTACK_ID[config["sensitivity"]["attack"]]
    base = f"results/{DATA_ID}/sensitivity/{{model}}/{attack_id}"
    files = [f"{base}/sensitivity_{SENSITIVITY_FORM}.csv"]
    files += [
        f"{base}/top{percent:g}pct_{SENSITIVITY_FORM}.csv"
        for percent in config["sensitivity"]["top_percent"]
    ]
    return expand(files, model=list(MODELS))


def final_outputs():
    return [
        "results/tables/robustness.csv",
        "results/tables/robustness.md",
        *sensitivity_outputs(),
    ]
