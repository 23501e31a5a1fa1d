"""What a validated config asks the workflow to make: the registries of models and attacks with their ids,
and the path of every result.

Plain Python (no torch, no Snakemake), so that it is unit-tested like the rest of the package. Every id is
``<readable name>~<hash of the settings that produce it>`` (advneurons.config.settings): a changed setting
gives new paths and re-runs only what depends on it; undoing it points back at the old results.

The model registries, and why there are several:

- ``analysed``: the models of ``models.training``; every analysis stage runs on them.
- ``defense_models``: the models of ``defenses.training`` that are not analysed ones, and the SNS fine-tunings
  of external models; trained, evaluated in the final table, measured for the sensitivity-by-training figure
  (built-in architectures).
- ``layer_range_models``: the extra SNS fine-tunings of the layer-range sweep (trained, then evaluated
  under that sweep's attacks only).
- ``defended``: MeanSparse and IG-Defense wrapped around trained models (no training of their own);
  ``ig_defended`` is its IG-Defense part, which has its own analysis.
- ``external``: models from outside (``external_models``), made by ``import_model`` at the same checkpoint
  path as a trained model; evaluated and measured for sensitivity, not trained or analysed further.
- ``trained`` = analysed + defense + layer-range models: what ``train_model`` makes.
- ``evaluated`` = analysed + defense + external + defended models: the rows of the final robustness table.
- ``tabled`` = analysed + external models: the rows of the robustness tables, measured for neuron sensitivity,
  and the subjects of the PGD sweeps and the per-model SNS analyses (targeted sets, importance, layer similarity).
"""

from __future__ import annotations

import os

from advneurons.config import run_space, settings
from advneurons.evaluation import record_files

# Patterns of the wildcards of every rule; ids are "<name>~<8 hex digits>".
WILDCARD_PATTERNS = {
    "data": r"[a-z0-9]+~[0-9a-f]{8}",
    "model": r"[a-z0-9]+-[a-z0-9_]+~[0-9a-f]{8}",
    "attack": r"[a-z0-9_]+~[0-9a-f]{8}",
    "sweep": r"pgd_sweep~[0-9a-f]{8}",
    "targeted": r"targeted~[0-9a-f]{8}",
    "suppression": r"suppression~[0-9a-f]{8}",
    "ratios": r"ratios~[0-9a-f]{8}",
    "k": r"[0-9]+",
    "form": r"(tip|eccv)_(conv|bn|relu)",
    "percent": r"[0-9]+(\.[0-9]+)?",
    "percents": r"[0-9.]+(-[0-9.]+)*",
    "psn": r"psn~[0-9a-f]{8}",
    "deviation": r"deviation~[0-9a-f]{8}",
    "noise": r"noise~[0-9a-f]{8}",
    "heatmaps": r"heatmaps~[0-9a-f]{8}",
    "analysis": r"analysis~[0-9a-f]{8}",
    # PSN node names: conv13, conv13.bn, conv13.relu, l4b2add, pool4; an external model's qualified module names
    "layer": r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*",
}

# The report's first page once a run has made it (Snakefile `report:`), in the run's folder (Plan.landing_page).
LANDING_PAGE_NAME = "report_landing.rst"


def split_file(split: str) -> str:
    """Pattern of a dataset split file (train, val, test) under the {data} wildcard."""
    return f"results/{{data}}/data/{split}.npz"


class Plan:
    """Registries and result paths of one validated config (``settings.validate_config`` has filled its
    defaults). Path methods return paths under this config's data id."""

    def __init__(self, config: dict):
        self.config = config
        self.dataset = config["dataset"]["name"]
        self.data_id = settings.make_id(self.dataset, settings.dataset_params(config))
        # tables, findings, figures and the landing page of this config: results/runs/<run>~<config id>
        self.run_id = run_space.run_id(config)
        self.run_dir = run_space.run_dir(config)
        self.landing_page = self.run_file(LANDING_PAGE_NAME)
        self.archs = list(config["models"]["architectures"])
        self.analysed = settings.model_entries(config)
        self.defense_models = {**settings.defense_entries(config), **settings.external_sns_entries(config)}
        self.layer_range = settings.sns_layer_range_models(config)
        self.layer_range_models = settings.sns_layer_range_entries(config)
        self.ig_defended = settings.ig_defense_entries(config)
        self.defended = {**settings.meansparse_entries(config), **self.ig_defended}
        self.external = settings.external_entries(config)
        self.all_models = {**self.analysed, **self.defense_models}
        self.trained = {**self.all_models, **self.layer_range_models}
        self.evaluated = {**self.all_models, **self.external, **self.defended}
        # evaluated under the attack suite in the robustness tables, measured for neuron sensitivity
        self.tabled = {**self.analysed, **self.external}
        self.attacks = settings.attack_entries(config)
        self.attack_id = {entry["name"]: attack_id for attack_id, entry in self.attacks.items()}
        self.robustness = settings.robustness_entries(config)
        self.robustness_id = {entry["name"]: eval_id for eval_id, entry in self.robustness.items()}
        self.sweep_id = settings.sweep_id(config)
        self.sns = config["sns"]
        self.sns_id = settings.sns_ids(config)
        self.psn = config["psn"]
        # the models PSN scores: the analysed ones of psn.training and the external ones whose entry asks for it
        self.psn_models = ({**{m: self.analysed[m] for m in self.analysed_of(self.psn["training"])},
                            **{m: e for m, e in self.external.items() if e["external"].get("psn")}}
                           if self.psn.get("enabled") else {})
        self.ig_analysis_id = settings.ig_analysis_id(config)
        self.transfer = settings.transfer_attacks(config)
        # "<form>_<site>", e.g. tip_bn: the formula (TIP Eq 1 or ECCV) and where each conv layer is read
        self.sensitivity_form = f'{config["sensitivity"]["form"]}_{config["sensitivity"]["site"]}'
        self.sensitivity_attack = self.attack_id[config["sensitivity"]["attack"]]  # pairs behind sensitivity
        self.cifar10_archive_record = os.path.join(
            config["dataset"]["cifar10"]["data_dir"], "cifar-10-python.tar.gz.verified.json"
        )

    # ---------------------------------------------------------------------------------------- models
    def model_label(self, model_id: str) -> str:
        """Display name of a model in tables and figures, e.g. vgg16-pat."""
        entry = self.evaluated.get(model_id) or self.layer_range_models[model_id]
        return f"{entry['arch']}-{entry['training_name']}"

    def analysed_of(self, training_names) -> list[str]:
        """Ids of the analysed models of the given trainings."""
        return [m for m, e in self.analysed.items() if e["training_name"] in training_names]

    def analysed_by_training(self, arch: str) -> dict[str, str]:
        """training name -> id of each analysed model of one architecture."""
        return {e["training_name"]: m for m, e in self.analysed.items() if e["arch"] == arch}

    def psn_ids(self, entry: dict) -> dict[str, str]:
        """Ids of the PSN outputs of one scored model (scores, deviation, attack, heatmaps)."""
        return settings.psn_ids(self.config, entry)

    # ----------------------------------------------------------------------------------------- paths
    def run_file(self, relative: str) -> str:
        """A run-level output (a table, the findings, a cross-model figure) in this config's results folder;
        `relative` may hold wildcards, e.g. "figures/sensitivity_by_training_{arch}.csv"."""
        return f"{self.run_dir}/{relative}"

    def run_log(self, rule: str, ext: str = "log") -> str:
        """Log (ext "log") or benchmark file (ext "tsv") of a run-level rule: one per config, like its outputs."""
        return f"{'logs' if ext == 'log' else 'benchmarks'}/runs/{self.run_id}/{rule}.{ext}"

    def model_path(self, model_id: str) -> str:
        """Checkpoint of a trained or a defended (MeanSparse, IG-Defense) model."""
        if model_id in self.ig_defended:
            return f"results/{self.data_id}/ig_defense/{model_id}/model.pt"
        if model_id in self.defended:
            return f"results/{self.data_id}/defended/{model_id}/model.pt"
        return f"results/{self.data_id}/models/{model_id}/model.pt"

    def pairs_path(self, model_id: str, attack_id: str) -> str:
        return f"results/{self.data_id}/pairs/{model_id}/{attack_id}/pairs.npz"

    def robustness_record(self, model_id: str, attack_name: str) -> str:
        """Per-model record of one robustness evaluation (evaluate_attack)."""
        return f"results/{self.data_id}/robustness/{model_id}/{self.robustness_id[attack_name]}.csv"

    def sensitivity_file(self, model_id: str) -> str:
        return (f"results/{self.data_id}/sensitivity/{model_id}/{self.sensitivity_attack}/"
                f"sensitivity_{self.sensitivity_form}.csv")

    def top_file(self, model_id: str, percent: float) -> str:
        return (f"results/{self.data_id}/sensitivity/{model_id}/{self.sensitivity_attack}/"
                f"top{percent:g}pct_{self.sensitivity_form}.csv")

    def ratio_file(self, model_id: str) -> str:
        return f"results/{self.data_id}/sns/{model_id}/{self.sns_id['ratios']}.csv"

    def sns_model_file(self, kind: str, model_id: str) -> str:
        """A per-model SNS result the findings read."""
        base = f"results/{self.data_id}/sns/{model_id}"
        targeted = f"{base}/{self.sns_id['targeted']}"
        k, p = self.sns["targeted"]["k"], self.sns["layer_top_percent"]
        return {
            "importance": f"{targeted}/importance_k{k}.csv",
            "importance_summary": f"{targeted}/importance_k{k}_summary.csv",
            "importance_figure": f"{targeted}/importance_k{k}.png",
            "layer_similarity": f"{targeted}/layer_similarity_top{p:g}pct.csv",
            "targeted_sensitivity": f"{targeted}/sensitivity_by_target_k{k}.csv",
            "suppression": (f"{base}/{self.sensitivity_attack}-{self.sensitivity_form}/"
                            f"{self.sns_id['suppression']}_summary.csv"),
        }[kind]

    def sns_arch_file(self, kind: str, arch: str) -> str:
        """A per-architecture SNS result (ratio report, sensitivity curves)."""
        base = f"results/{self.data_id}/sns/{arch}/{self.sensitivity_attack}"
        form = self.sensitivity_form
        return {
            "ratio_table": f"{base}-{form}/{self.sns_id['ratios']}_table_ii.csv",
            "ratio_means": f"{base}-{form}/{self.sns_id['ratios']}_layer_means.csv",
            "curves_summary": f"{base}/sensitivity_curves_{form}_summary.csv",
            "curves_figure": f"{base}/sensitivity_curves_{form}.png",
        }[kind]

    def sweep_file(self, model_id: str) -> str:
        return f"results/{self.data_id}/sweeps/{model_id}/{self.sweep_id}.csv"

    def transfer_row(self, model_id: str, attack_name: str) -> str:
        return f"results/{self.data_id}/transfer/{model_id}/{self.robustness_id[attack_name]}.csv"

    def ig_analysis_files(self, model_id: str) -> list[str]:
        base = f"results/{self.data_id}/ig_defense/{model_id}/{self.ig_analysis_id}"
        return [f"{base}.png", f"{base}_summary.md"]

    # ------------------------------------------------------------------------------ groups of results
    def robustness_records(self, names, models=None) -> list[str]:
        """Records of every model (default: the analysed and the external ones) under each named attack."""
        return [self.robustness_record(m, name) for m in (self.tabled if models is None else models)
                for name in names]

    @staticmethod
    def record_sidecars(records: list[str]) -> list[str]:
        """The per-image records and metadata the evaluation jobs write beside these records CSVs (tables read
        them for the worst-case column and every cell's lineage)."""
        return [str(p) for path in records for p in record_files.record_sidecars(path)]

    def final_table_records(self) -> list[str]:
        """Records of every model of the final table under the attacks it is evaluated under."""
        return [self.robustness_record(m, name) for m, entry in self.evaluated.items()
                for name in settings.evaluated_attacks(self.config, entry)]

    def all_records(self) -> list[str]:
        """Records of every evaluation job of the run (tables, final table, layer-range sweep), each once."""
        records = []
        if self.config["robustness"]["table_iii"]:
            records += self.robustness_records(self.config["robustness"]["table_iii"].values())
        records += self.robustness_records(self.config["robustness"]["table_i"])
        if self.config["defenses"]["final_table"]:
            records += self.final_table_records()
        if self.config["sns_layer_range"]["enabled"]:
            records += self.layer_range_records()
        return list(dict.fromkeys(records))

    def long_table_models(self) -> dict[str, dict]:
        """Model label -> {arch, training, method} of every model the run evaluates."""
        entries = {**self.evaluated, **self.layer_range_models}
        return {self.model_label(m): {"arch": e["arch"], "training": e["training_name"],
                                      "method": e["training"]["method"]} for m, e in entries.items()}

    def layer_range_records(self) -> list[str]:
        """Records of every model of the SNS layer-range sweep under its attacks."""
        return [self.robustness_record(m["model_id"], name) for m in self.layer_range
                for name in self.config["sns_layer_range"]["attacks"]]

    def sweep_files(self) -> list[str]:
        """Sweeps of the analysed and external models, and of the defenses where defenses.sweeps is on."""
        models = self.evaluated if self.config["defenses"]["sweeps"] else self.tabled
        return [self.sweep_file(m) for m in models]

    def transfer_rows(self) -> list[str]:
        return [self.transfer_row(m, name) for m in self.defended for name in self.transfer]

    def findings_inputs(self) -> dict:
        """Labelled inputs of the SNS findings: what exists depends on the configured analyses."""
        # the per-model analyses (targeted sets, importance, layer similarity) run on external models too
        label, models = self.model_label, self.tabled
        suppressed = [*self.analysed_of(self.sns["suppression"]["training"]),
                      *(m for m, e in self.external.items() if e["external"].get("suppression"))]
        out = {
            "importance": {label(m): self.sns_model_file("importance", m) for m in models},
            "importance_summaries": {label(m): self.sns_model_file("importance_summary", m) for m in models},
            "layer_similarity": {label(m): self.sns_model_file("layer_similarity", m) for m in models},
            "targeted_sensitivity": {label(m): self.sns_model_file("targeted_sensitivity", m) for m in models},
            "suppression": {label(m): self.sns_model_file("suppression", m) for m in suppressed},
            "sensitivity_summaries": {a: self.sns_arch_file("curves_summary", a) for a in self.archs},
        }
        if self.sns["ratios"]["perturbations"]:
            out["ratio_tables"] = {a: self.sns_arch_file("ratio_table", a) for a in self.archs}
            out["ratio_layer_means"] = {a: self.sns_arch_file("ratio_means", a) for a in self.archs}
        if self.config["defenses"]["final_table"]:
            out["extra_sections"] = [self.run_file("tables/defense_findings.json")]
        return out

    def landing_page_inputs(self) -> dict[str, str]:
        """The headline results the report's landing page shows: whichever of them this config makes."""
        files = {}
        if self.config["robustness"]["table_iii"]:
            files["robustness"] = self.run_file("tables/robustness.csv")
        if self.config["defenses"]["final_table"]:
            files["final"] = self.run_file("tables/final_robustness.csv")
        if self.sns["enabled"]:
            files["findings"] = self.run_file("findings.json")
        return files
