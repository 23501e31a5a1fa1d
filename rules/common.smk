# Config validation, the parameter-encoding ids that name every output, and input/param helpers.
# Every id is "<readable name>~<hash of the settings that produce it>" (advneurons.config.settings), so a changed
# setting gets new paths and re-runs only what depends on it; undoing it points back at old results.

from snakemake.utils import min_version

from advneurons.config import settings
from advneurons.workflow.fingerprints import script_fingerprint

min_version("9.0")


# Fills schema defaults in place and names the offending key on error, before any job is scheduled.
settings.validate_config(config)

DATASET = config["dataset"]["name"]
DATA_ID = settings.make_id(DATASET, settings.dataset_params(config))
MODELS = settings.model_entries(config)  # analysed models: every stage runs on them
DEFENSE_MODELS = settings.defense_entries(
    config
)  # defenses: trained, evaluated, measured
ALL_MODELS = {**MODELS, **DEFENSE_MODELS}  # every analysed and defense model
LAYER_RANGE = settings.sns_layer_range_models(config)  # SNS by fine-tuned layer range
LAYER_RANGE_MODELS = settings.sns_layer_range_entries(config)  # its extra fine-tunings
TRAINED = {**ALL_MODELS, **LAYER_RANGE_MODELS}  # every model train_model makes
IG_DEFENDED = settings.ig_defense_entries(config)  # IG-Defense around trained models
DEFENDED = {
    **settings.meansparse_entries(config),
    **IG_DEFENDED,
}  # post-training and test-time defenses of trained models
IG_ANALYSIS_ID = settings.ig_analysis_id(config)
EVALUATED = {**ALL_MODELS, **DEFENDED}  # every model of the final robustness table
ATTACKS = settings.attack_entries(config)
ATTACK_ID = {entry["name"]: attack_id for attack_id, entry in ATTACKS.items()}
ROBUSTNESS = settings.robustness_entries(config)
ROBUSTNESS_ID = {entry["name"]: eval_id for eval_id, entry in ROBUSTNESS.items()}
SWEEP_ID = settings.sweep_id(config)
SNS = config["sns"]
SNS_ID = settings.sns_ids(config)
ARCHS = config["models"]["architectures"]
# "<form>_<site>", e.g. tip_bn: the formula (TIP Eq 1 or ECCV) and where each conv layer is read
SENSITIVITY_FORM = f'{config["sensitivity"]["form"]}_{config["sensitivity"]["site"]}'
PSN = config["psn"]
PSN_BATCH_SIZE = PSN["batch_size"]
SENSITIVITY_ATTACK = ATTACK_ID[
    config["sensitivity"]["attack"]
]  # pair sets behind the sensitivity files
CIFAR10_ARCHIVE_RECORD = os.path.join(
    config["dataset"]["cifar10"]["data_dir"], "cifar-10-python.tar.gz.verified.json"
)


wildcard_constraints:
    data=r"[a-z0-9]+~[0-9a-f]{8}",
    model=r"[a-z0-9]+-[a-z0-9_]+~[0-9a-f]{8}",
    attack=r"[a-z0-9_]+~[0-9a-f]{8}",
    sweep=r"pgd_sweep~[0-9a-f]{8}",
    targeted=r"targeted~[0-9a-f]{8}",
    suppression=r"suppression~[0-9a-f]{8}",
    ratios=r"ratios~[0-9a-f]{8}",
    arch="|".join(ARCHS),
    k=r"[0-9]+",
    form=r"(tip|eccv)_(conv|bn|relu)",
    percent=r"[0-9]+(\.[0-9]+)?",
    percents=r"[0-9.]+(-[0-9.]+)*",
    psn=r"psn~[0-9a-f]{8}",
    deviation=r"deviation~[0-9a-f]{8}",
    noise=r"noise~[0-9a-f]{8}",
    heatmaps=r"heatmaps~[0-9a-f]{8}",
    analysis=r"analysis~[0-9a-f]{8}",
    layer=r"[a-z0-9]+(\.(bn|relu))?",  # PSN node names: conv13, conv13.bn, conv13.relu, l4b2add, pool4


def code_version(script):
    """Fingerprint of exactly the package code that workflow_scripts/<script>.py runs: editing that code
    re-runs the step, editing anything else (or a comment, or a docstring) does not (workflow/fingerprints.py).
    """
    return script_fingerprint(
        os.path.join(workflow.basedir, "workflow_scripts", f"{script}.py")
    )


def sensitivity_normalised(wildcards):
    """TIP Eq 1 divides by the feature-map size; the ECCV form does not."""
    return wildcards.form.split("_")[0] == "tip"


def sensitivity_site(wildcards):
    return wildcards.form.split("_")[1]


def split_file(split):
    return f"results/{{data}}/data/{split}.npz"


def dataset_inputs(wildcards):
    """The record of the verified CIFAR-10 archive when that dataset is configured (it names the archive);
    digits ship with scikit-learn. ancient(): re-verifying the archive (after a change of url) rewrites the
    record but not the data; the splits depend on the archive's md5, which is among their params.
    """
    return (
        {"archive_record": ancient(CIFAR10_ARCHIVE_RECORD)}
        if DATASET == "cifar10"
        else {}
    )


def dataset_settings(wildcards):
    return settings.dataset_params(config) | {
        "test_fraction": config["dataset"]["test_fraction"]
    }


def model_settings(wildcards):
    return TRAINED[wildcards.model]


def training_inputs(wildcards):
    """The splits, the base checkpoint of a fine-tuned model (SNS), the static source models of EAT."""
    files = {
        "train": f"results/{wildcards.data}/data/train.npz",
        "val": f"results/{wildcards.data}/data/val.npz",
    }
    entry = TRAINED[wildcards.model]
    base = settings.base_model_id(config, entry)
    if base is not None:
        files["base"] = f"results/{wildcards.data}/models/{base}/model.pt"
    static = settings.static_model_ids(config, entry)
    if static:
        files["static"] = [
            f"results/{wildcards.data}/models/{m}/model.pt" for m in static
        ]
    return files


def attack_settings(wildcards):
    return ATTACKS[wildcards.attack]


def model_path(model_id):
    """Checkpoint of a trained or a defended (MeanSparse, IG-Defense) model."""
    if model_id in IG_DEFENDED:
        return f"results/{DATA_ID}/ig_defense/{model_id}/model.pt"
    if model_id in DEFENDED:
        return f"results/{DATA_ID}/defended/{model_id}/model.pt"
    return f"results/{DATA_ID}/models/{model_id}/model.pt"


def evaluated_model(wildcards):
    return model_path(wildcards.model)


def meansparse_inputs(wildcards):
    return {
        "model": model_path(DEFENDED[wildcards.model]["base_id"]),
        "train": f"results/{wildcards.data}/data/train.npz",
        "val": f"results/{wildcards.data}/data/val.npz",
    }


def meansparse_settings(wildcards):
    entry = DEFENDED[wildcards.model]
    return entry["settings"] | {"seed": entry["seed"]}


def ig_defense_inputs(wildcards):
    return {
        "model": model_path(IG_DEFENDED[wildcards.model]["base_id"]),
        "train": f"results/{wildcards.data}/data/train.npz",
        "val": f"results/{wildcards.data}/data/val.npz",
    }


def ig_defense_settings(wildcards):
    entry = IG_DEFENDED[wildcards.model]
    return entry["settings"] | {"seed": entry["seed"]}


def ig_analysis_settings(wildcards):
    analysis = config["ig_defense"]["analysis"]
    return {
        "attack": config["attacks"][analysis["attack"]],
        "n_images": analysis["n_images"],
        "seed": config["seed"],
    }


def ig_defense_outputs():
    base = f"results/{DATA_ID}/ig_defense/{{model}}/{IG_ANALYSIS_ID}"
    return expand([f"{base}.png", f"{base}_summary.md"], model=list(IG_DEFENDED))


TRANSFER = settings.transfer_attacks(
    config
)  # attacks of the transfer check of DEFENDED


def transfer_inputs(wildcards):
    """The defended model, its base model's pair set under the attack, and both white-box records."""
    base_id = DEFENDED[wildcards.model]["base_id"]
    name = ROBUSTNESS[wildcards.attack]["name"]
    record = f"results/{wildcards.data}/robustness/{{}}/{wildcards.attack}.csv"
    return {
        "model": model_path(wildcards.model),
        "pairs": pairs_path(base_id, ATTACK_ID[name]),
        "whitebox": record.format(wildcards.model),
        "base_whitebox": record.format(base_id),
    }


def transfer_settings(wildcards):
    entry = DEFENDED[wildcards.model]
    return {
        "attack": ROBUSTNESS[wildcards.attack]["name"],
        "base_name": model_label(entry["base_id"]),
        "seed": entry["seed"],
    }


def transfer_rows():
    return [
        f"results/{DATA_ID}/transfer/{model_id}/{ROBUSTNESS_ID[name]}.csv"
        for model_id in DEFENDED
        for name in TRANSFER
    ]


def transfer_labels(wildcards):
    """Attack name -> its table_iii column label."""
    return {
        name: label
        for label, name in config["robustness"]["table_iii"].items()
        if name in TRANSFER
    }


def defense_findings_inputs(wildcards):
    out = {
        "final": "results/tables/final_robustness.csv",
        "settings": "results/tables/final_robustness_settings.csv",
        "records": final_table_records(),  # per-image results for the paired tests
        "sensitivity": expand(
            "results/figures/sensitivity_by_training_{arch}.csv", arch=ARCHS
        ),
    }
    if transfer_rows():
        out["transfer"] = "results/tables/transfer_check.csv"
    return out


def pairs_path(model_id, attack_id):
    return f"results/{DATA_ID}/pairs/{model_id}/{attack_id}/pairs.npz"


def model_label(model_id):
    """Display name of a model in tables and figures, e.g. vgg16-pat."""
    entry = EVALUATED.get(model_id) or LAYER_RANGE_MODELS[model_id]
    return f"{entry['arch']}-{entry['training_name']}"


def model_name(wildcards):
    return model_label(wildcards.model)


def robustness_settings(wildcards):
    return ROBUSTNESS[wildcards.attack]


def robustness_records(names, models=None):
    """Records files of every model (default: the analysed ones) under each named attack."""
    return [
        f"results/{DATA_ID}/robustness/{model_id}/{ROBUSTNESS_ID[name]}.csv"
        for model_id in (MODELS if models is None else models)
        for name in names
    ]


def final_table_records():
    """Records of every model of the final table under the attacks it is evaluated under."""
    return [
        f"results/{DATA_ID}/robustness/{model_id}/{ROBUSTNESS_ID[name]}.csv"
        for model_id, entry in EVALUATED.items()
        for name in settings.evaluated_attacks(config, entry)
    ]


def final_table_models(wildcards):
    """Model label -> {arch, training, method, group} in table order: architectures, then trainings."""
    from advneurons.defenses.tables import group_of

    out = {}
    for arch in ARCHS:
        for model_id, entry in EVALUATED.items():
            if entry["arch"] == arch:
                out[model_label(model_id)] = {
                    "arch": arch,
                    "training": entry["training_name"],
                    "method": entry["training"]["method"],
                    "group": f"{arch}-{group_of(entry['training_name'], entry['training'])}",
                    "not_run": [
                        label
                        for label, name in config["robustness"]["table_iii"].items()
                        if name not in settings.evaluated_attacks(config, entry)
                    ],
                }
    return out


def arch_all_sensitivity_files(wildcards):
    """training name -> sensitivity file of every model (analysed and defenses) of one architecture."""
    return {
        entry["training_name"]: sensitivity_file(m)
        for m, entry in ALL_MODELS.items()
        if entry["arch"] == wildcards.arch
    }


def sweep_settings(wildcards):
    return config["sweeps"] | {"seed": config["seed"]}


def sweep_files():
    """Sweeps of the analysed models, and of the defenses where defenses.sweeps is on."""
    models = EVALUATED if config["defenses"]["sweeps"] else MODELS
    return [
        f"results/{DATA_ID}/sweeps/{model_id}/{SWEEP_ID}.csv" for model_id in models
    ]


def models_of(training_names):
    return [m for m, e in MODELS.items() if e["training_name"] in training_names]


def sensitivity_file(model_id):
    attack_id = ATTACK_ID[config["sensitivity"]["attack"]]
    return f"results/{DATA_ID}/sensitivity/{model_id}/{attack_id}/sensitivity_{SENSITIVITY_FORM}.csv"


def top_file(model_id, percent):
    attack_id = ATTACK_ID[config["sensitivity"]["attack"]]
    return f"results/{DATA_ID}/sensitivity/{model_id}/{attack_id}/top{percent:g}pct_{SENSITIVITY_FORM}.csv"


def targeted_settings(wildcards):
    return {
        "attack": config["attacks"][SNS["targeted"]["attack"]],
        "n_per_class": SNS["targeted"]["n_per_class"],
        "seed": config["seed"],
    }


def suppression_settings(wildcards):
    sup = SNS["suppression"]
    return {
        **sup,
        "perturbations": {
            name: config["attacks"][name] for name in sup["perturbations"]
        },
        "seed": config["seed"],
    }


def ratio_settings(wildcards):
    return {**SNS["ratios"], "seed": config["seed"]}


def arch_sensitivity_files(wildcards):
    """training name -> sensitivity file of each model of one architecture."""
    return {
        MODELS[m]["training_name"]: sensitivity_file(m)
        for m in MODELS
        if MODELS[m]["arch"] == wildcards.arch
    }


def arch_ratio_files(wildcards):
    return {
        MODELS[m]["training_name"]: f"results/{DATA_ID}/sns/{m}/{wildcards.ratios}.csv"
        for m in MODELS
        if MODELS[m]["arch"] == wildcards.arch
    }


def arch_top_files(wildcards):
    return {
        MODELS[m]["training_name"]: top_file(m, SNS["layer_top_percent"])
        for m in MODELS
        if MODELS[m]["arch"] == wildcards.arch
    }


def model_sensitivity_file(wildcards):
    return sensitivity_file(wildcards.model)


def arch_top_list(wildcards):
    return list(arch_top_files(wildcards).values())


def arch_ratio_labels(wildcards):
    return list(arch_ratio_files(wildcards))


def sns_model_file(kind, model_id):
    base = f"results/{DATA_ID}/sns/{model_id}"
    k, p = SNS["targeted"]["k"], SNS["layer_top_percent"]
    return {
        "importance": f"{base}/{SNS_ID['targeted']}/importance_k{k}.csv",
        "importance_summary": f"{base}/{SNS_ID['targeted']}/importance_k{k}_summary.csv",
        "layer_similarity": f"{base}/{SNS_ID['targeted']}/layer_similarity_top{p:g}pct.csv",
        "targeted_sensitivity": f"{base}/{SNS_ID['targeted']}/sensitivity_by_target_k{k}.csv",
        "suppression": f"{base}/{SENSITIVITY_ATTACK}-{SENSITIVITY_FORM}/{SNS_ID['suppression']}_summary.csv",
    }[kind]


def sns_arch_file(kind, arch):
    base = f"results/{DATA_ID}/sns/{arch}/{SENSITIVITY_ATTACK}"
    return {
        "ratio_table": f"{base}-{SENSITIVITY_FORM}/{SNS_ID['ratios']}_table_ii.csv",
        "ratio_means": f"{base}-{SENSITIVITY_FORM}/{SNS_ID['ratios']}_layer_means.csv",
        "curves_summary": f"{base}/sensitivity_curves_{SENSITIVITY_FORM}_summary.csv",
    }[kind]


def findings_inputs(wildcards):
    """Labelled inputs of the findings: what exists depends on the configured analyses."""
    label = model_label
    suppressed = models_of(SNS["suppression"]["training"])
    out = {
        "importance": {label(m): sns_model_file("importance", m) for m in MODELS},
        "importance_summaries": {
            label(m): sns_model_file("importance_summary", m) for m in MODELS
        },
        "layer_similarity": {
            label(m): sns_model_file("layer_similarity", m) for m in MODELS
        },
        "targeted_sensitivity": {
            label(m): sns_model_file("targeted_sensitivity", m) for m in MODELS
        },
        "suppression": {label(m): sns_model_file("suppression", m) for m in suppressed},
        "sensitivity_summaries": {a: sns_arch_file("curves_summary", a) for a in ARCHS},
    }
    if SNS["ratios"]["perturbations"]:
        out["ratio_tables"] = {a: sns_arch_file("ratio_table", a) for a in ARCHS}
        out["ratio_layer_means"] = {a: sns_arch_file("ratio_means", a) for a in ARCHS}
    if config["defenses"]["final_table"]:
        out["extra_sections"] = ["results/tables/defense_findings.json"]
    return out


def findings_files(wildcards):
    groups = findings_inputs(wildcards).values()
    return [f for g in groups for f in (g.values() if isinstance(g, dict) else g)]


def psn_score_settings(wildcards):
    arch = MODELS[wildcards.model]["arch"]
    keys = ("bound_method", "variant", "zscore", "nodes", "eps", "mem_budget_mb")
    return {k: PSN[k] for k in keys} | {
        "n_images": PSN["n_images"][arch],
        "seed": config["seed"],
    }


def psn_deviation_settings(wildcards):
    return PSN["deviation"] | {"seed": config["seed"]}


def psn_attack_settings(wildcards):
    return PSN["attack"] | {"seed": config["seed"]}


def psn_heatmap_settings(wildcards):
    return settings.heatmap_settings(config) | {"seed": config["seed"]}


def psn_outputs():
    """Every PSN product of each scored model: top units, deviation, attack, heatmaps, agreement."""
    if not PSN["enabled"]:
        return []
    percents = "-".join(f"{p:g}" for p in PSN["top_percent"])
    agreement = f"agreement_{SENSITIVITY_ATTACK}-{SENSITIVITY_FORM}_top{PSN['agreement']['k_percent']:g}pct"
    files = []
    for model_id in models_of(PSN["training"]):
        ids = settings.psn_ids(config, MODELS[model_id])
        base = f"results/{DATA_ID}/psn/{model_id}/{ids['scores']}"
        files += [
            f"{base}/top{percents}pct.csv.gz",
            f"{base}/{ids['deviation']}.png",
            f"{base}/{ids['attack']}.png",
            f"{base}/{agreement}.png",
        ]
        layers = PSN["heatmaps"]["layers"].get(MODELS[model_id]["arch"], [])
        files += [f"{base}/{ids['heatmaps']}/{layer}.png" for layer in layers]
    return files


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


def sns_outputs():
    if not SNS["enabled"]:
        return []
    files = ["results/findings.md"]
    files += [
        f"results/{DATA_ID}/sns/{a}/{SENSITIVITY_ATTACK}/sensitivity_curves_{SENSITIVITY_FORM}.png"
        for a in ARCHS
    ]
    files += [
        f"results/{DATA_ID}/sns/{m}/{SNS_ID['targeted']}/importance_k{SNS['targeted']['k']}.png"
        for m in MODELS
    ]
    return files


def defense_outputs():
    if not config["defenses"]["final_table"]:
        return []
    files = [f"results/tables/final_robustness.{ext}" for ext in ("csv", "md", "tex")]
    files += [f"results/figures/sensitivity_by_training_{arch}.png" for arch in ARCHS]
    if transfer_rows():
        files.append("results/tables/transfer_check.md")
    if LAYER_RANGE:
        files.append("results/tables/sns_layer_range.md")
    return files + ig_defense_outputs()


def layer_range_records():
    """Records of every model of the SNS layer-range sweep under its attacks."""
    return [
        f"results/{DATA_ID}/robustness/{m['model_id']}/{ROBUSTNESS_ID[name]}.csv"
        for m in LAYER_RANGE
        for name in config["sns_layer_range"]["attacks"]
    ]


def layer_range_attack_labels():
    """Attack name -> column label of the layer-range table (its Table III label where it has one)."""
    labels = {name: label for label, name in config["robustness"]["table_iii"].items()}
    return {
        name: labels.get(name, name) for name in config["sns_layer_range"]["attacks"]
    }


def layer_range_models(wildcards):
    """Model label -> {arch, first_layer, n_layers} of the layer-range sweep, in table order."""
    return {
        model_label(m["model_id"]): {
            "arch": m["arch"],
            "first_layer": m["first_layer"],
            "n_layers": len(m["layers"]),
        }
        for m in LAYER_RANGE
    }


def final_outputs():
    return [
        *pair_set_outputs(),
        *robustness_outputs(),
        *sensitivity_outputs(),
        *sns_outputs(),
        *psn_outputs(),
        *defense_outputs(),
        LANDING_PAGE,
    ]


# The report's first page once a run has made it (Snakefile `report:`); rules/report.smk writes it.
LANDING_PAGE = "results/report_landing.rst"


def landing_page_inputs(wildcards):
    """The headline results the landing page shows: whichever of them this config makes."""
    files = {}
    if config["robustness"]["table_iii"]:
        files["robustness"] = "results/tables/robustness.csv"
    if config["defenses"]["final_table"]:
        files["final"] = "results/tables/final_robustness.csv"
    if SNS["enabled"]:
        files["findings"] = "results/findings.json"
    return files


def landing_page_links(wildcards):
    """Report items the landing page links to (names of files marked for the report)."""
    names = {
        "robustness": ["robustness.html", "robustness_settings.html"],
        "final": ["final_robustness.html"],
        "findings": ["findings.html"],
    }
    return [n for key in landing_page_inputs(wildcards) for n in names[key]]


def results_guide():
    """What the end of a successful run prints: where to look first (only what exists)."""
    lines = ["", "Results (this run and any earlier ones in results/):"]
    for path, what in (
        (
            "results/tables/robustness.md",
            "robustness table (TIP Table III layout); every cell's settings beside it",
        ),
        ("results/tables/final_robustness.md", "models and defenses x attack suite"),
        ("results/findings.md", "each paper claim with its verdict and statistic"),
        ("results/tables", "all tables (CSV + Markdown)"),
        ("results/figures", "all figures"),
    ):
        if os.path.exists(path):
            lines.append(f"  {path:38s} {what}")
    lines.append(
        f"  results/{DATA_ID}/               every intermediate, in folders named by the settings that made it"
    )
    lines.append(
        "  snakemake --report report.html          one HTML page with every table and figure and its provenance"
    )
    return "\n".join(lines)
