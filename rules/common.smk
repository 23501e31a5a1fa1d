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
ROBUSTNESS = settings.robustness_entries(config)
ROBUSTNESS_ID = {entry["name"]: eval_id for eval_id, entry in ROBUSTNESS.items()}
SWEEP_ID = settings.sweep_id(config)
SENSITIVITY_FORM = config["sensitivity"]["form"]
CIFAR10_ARCHIVE = os.path.join(
    config["dataset"]["cifar10"]["data_dir"], "cifar-10-python.tar.gz"
)


wildcard_constraints:
    data=r"[a-z0-9]+~[0-9a-f]{8}",
    model=r"[a-z0-9]+-[a-z0-9_]+~[0-9a-f]{8}",
    attack=r"[a-z0-9_]+~[0-9a-f]{8}",
    sweep=r"pgd_sweep~[0-9a-f]{8}",
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


def model_name(wildcards):
    """Display name of a model in tables and figures, e.g. vgg16-pat."""
    entry = MODELS[wildcards.model]
    return f"{entry['arch']}-{entry['training_name']}"


def robustness_settings(wildcards):
    return ROBUSTNESS[wildcards.attack]


def robustness_records(names):
    """Records files of every model under each named attack."""
    return [
        f"results/{DATA_ID}/robustness/{model_id}/{ROBUSTNESS_ID[name]}.csv"
        for model_id in MODELS
        for name in names
    ]


def sweep_settings(wildcards):
    return config["sweeps"] | {"seed": config["seed"]}


def sweep_files():
    return [
        f"results/{DATA_ID}/sweeps/{model_id}/{SWEEP_ID}.csv" for model_id in MODELS
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


def robustness_outputs():
    files = []
    if config["robustness"]["table_iii"]:
        files += ["results/tables/robustness.csv", "results/tables/robustness.md"]
    if config["robustness"]["table_i"]:
        files += [
            "results/tables/robustness_table_i.csv",
            "results/tables/robustness_table_i.md",
        ]
    if config["sweeps"]["enabled"]:
        files += ["results/tables/pgd_sweep.csv", "results/figures/pgd_sweep_steps.png"]
    return files


def pair_set_outputs():
    return [
        pairs_path(model_id, ATTACK_ID[name])
        for model_id in MODELS
        for name in config["evaluation"]["attacks"]
    ]


def final_outputs():
    return [*pair_set_outputs(), *robustness_outputs(), *sensitivity_outputs()]
