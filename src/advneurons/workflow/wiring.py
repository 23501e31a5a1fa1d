"""Per-job inputs and params: functions of a job's wildcards that Snakemake calls (``input: unpack(jobs.X)``,
``params: x=jobs.Y``). Plain Python over a :class:`Plan`; unit tests call them with any object that has the
wildcard attributes.

A params function returns exactly the settings that shape the job's output, so Snakemake's params trigger
re-runs a job when, and only when, one of them changes.
"""

from __future__ import annotations

from advneurons.config import settings
from advneurons.workflow.plan import Plan, split_file


class JobWiring:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.config = plan.config

    def _split(self, wildcards, split: str) -> str:
        return split_file(split).format(data=wildcards.data)

    def _seeded(self, params: dict) -> dict:
        return params | {"seed": self.config["seed"]}

    # -------------------------------------------------------------------------------------- data
    def dataset_inputs(self, wildcards) -> dict[str, str]:
        """The record of the verified CIFAR-10 archive when that dataset is configured (it names the
        archive); digits ship with scikit-learn."""
        return {"archive_record": self.plan.cifar10_archive_record} if self.plan.dataset == "cifar10" else {}

    def dataset_settings(self, wildcards) -> dict:
        return settings.dataset_params(self.config) | {"test_fraction": self.config["dataset"]["test_fraction"]}

    # ---------------------------------------------------------------------------------- training
    def model_settings(self, wildcards) -> dict:
        return self.plan.trained[wildcards.model]

    def external_settings(self, wildcards) -> dict:
        """The external model entry (name, source, normalisation, layers) that an import_model job turns into a
        checkpoint."""
        entry = self.plan.external[wildcards.model]
        return {"name": entry["arch"], "entry": settings.external_identity(entry["external"])}

    def external_weights(self, wildcards) -> str:
        """The weights file of an external model: a change of its contents (mtime) re-imports it."""
        from advneurons.models.external import weights_file

        return str(weights_file(self.plan.external[wildcards.model]["external"]["source"]))

    def training_inputs(self, wildcards) -> dict:
        """The splits, the base checkpoint of a fine-tuned model (SNS), the static source models of EAT."""
        files = {"train": self._split(wildcards, "train"), "val": self._split(wildcards, "val")}
        entry = self.plan.trained[wildcards.model]
        base = settings.base_model_id(self.config, entry)
        if base is not None:
            files["base"] = f"results/{wildcards.data}/models/{base}/model.pt"
        static = settings.static_model_ids(self.config, entry)
        if static:
            files["static"] = [f"results/{wildcards.data}/models/{m}/model.pt" for m in static]
        return files

    # --------------------------------------------------------------------------- attacks and tables
    def attack_settings(self, wildcards) -> dict:
        return self.plan.attacks[wildcards.attack]

    def robustness_settings(self, wildcards) -> dict:
        return self.plan.robustness[wildcards.attack]

    def evaluated_model(self, wildcards) -> str:
        return self.plan.model_path(wildcards.model)

    def model_name(self, wildcards) -> str:
        return self.plan.model_label(wildcards.model)

    def sweep_settings(self, wildcards) -> dict:
        return self._seeded(self.config["sweeps"])

    def final_table_models(self, wildcards) -> dict:
        """Model label -> {arch, training, method, group, not_run} in table order: architectures, then
        trainings."""
        table = self.config["robustness"]["table_iii"]
        out = {}
        for arch in [*self.plan.archs, *(e["arch"] for e in self.plan.external.values())]:
            for model_id, entry in self.plan.evaluated.items():
                if entry["arch"] != arch:
                    continue
                evaluated = settings.evaluated_attacks(self.config, entry)
                out[self.plan.model_label(model_id)] = {
                    "arch": arch,
                    "training": entry["training_name"],
                    "method": entry["training"]["method"],
                    "group": f"{arch}-{settings.display_group(entry['training_name'], entry['training'])}",
                    "not_run": [label for label, name in table.items() if name not in evaluated],
                }
        return out

    # --------------------------------------------------------------------------------- sensitivity
    def sensitivity_normalised(self, wildcards) -> bool:
        """TIP Eq 1 divides by the feature-map size; the ECCV form does not."""
        return wildcards.form.split("_")[0] == "tip"

    def sensitivity_site(self, wildcards) -> str:
        return wildcards.form.split("_")[1]

    def model_sensitivity_file(self, wildcards) -> str:
        return self.plan.sensitivity_file(wildcards.model)

    def arch_sensitivity_files(self, wildcards) -> dict[str, str]:
        """training name -> sensitivity file of each analysed model of one architecture."""
        return {name: self.plan.sensitivity_file(m)
                for name, m in self.plan.analysed_by_training(wildcards.arch).items()}

    def arch_all_sensitivity_files(self, wildcards) -> dict[str, str]:
        """training name -> sensitivity file of every model (analysed and defenses) of one architecture."""
        return {entry["training_name"]: self.plan.sensitivity_file(m)
                for m, entry in self.plan.all_models.items() if entry["arch"] == wildcards.arch}

    # ----------------------------------------------------------------------------------------- SNS
    def targeted_settings(self, wildcards) -> dict:
        targeted = self.plan.sns["targeted"]
        return self._seeded({"attack": self.config["attacks"][targeted["attack"]],
                             "n_per_class": targeted["n_per_class"]})

    def suppression_settings(self, wildcards) -> dict:
        sup = self.plan.sns["suppression"]
        return self._seeded({**sup, "perturbations": {name: self.config["attacks"][name]
                                                      for name in sup["perturbations"]}})

    def ratio_settings(self, wildcards) -> dict:
        return self._seeded(self.plan.sns["ratios"])

    def arch_ratio_files(self, wildcards) -> dict[str, str]:
        """training name -> sensitivity-ratio file of each analysed model of one architecture."""
        return {name: f"results/{wildcards.data}/sns/{m}/{wildcards.ratios}.csv"
                for name, m in self.plan.analysed_by_training(wildcards.arch).items()}

    def arch_ratio_labels(self, wildcards) -> list[str]:
        return list(self.arch_ratio_files(wildcards))

    def arch_top_list(self, wildcards) -> list[str]:
        """Top-percent channel lists of each analysed model of one architecture (ratio report)."""
        percent = self.plan.sns["layer_top_percent"]
        return [self.plan.top_file(m, percent) for m in self.plan.analysed_by_training(wildcards.arch).values()]

    def findings_inputs(self, wildcards) -> dict:
        return self.plan.findings_inputs()

    def findings_files(self, wildcards) -> list[str]:
        groups = self.plan.findings_inputs().values()
        return [f for g in groups for f in (g.values() if isinstance(g, dict) else g)]

    # ----------------------------------------------------------------------------------------- PSN
    def psn_score_settings(self, wildcards) -> dict:
        psn = self.plan.psn
        keys = ("bound_method", "variant", "zscore", "nodes", "last_nodes", "eps", "mem_budget_mb")
        entry = self.plan.psn_models[wildcards.model]
        return self._seeded({k: psn[k] for k in keys} | {"n_images": settings.psn_images(self.config, entry),
                                                         "nodes": settings.psn_node_set(self.config, entry)})

    def psn_deviation_settings(self, wildcards) -> dict:
        return self._seeded(self.plan.psn["deviation"])

    def psn_attack_settings(self, wildcards) -> dict:
        return self._seeded(self.plan.psn["attack"])

    def psn_heatmap_settings(self, wildcards) -> dict:
        return self._seeded(settings.heatmap_settings(self.config))

    # ------------------------------------------------------------------------------------ defenses
    def _defense_inputs(self, wildcards, registry: dict) -> dict[str, str]:
        return {"model": self.plan.model_path(registry[wildcards.model]["base_id"]),
                "train": self._split(wildcards, "train"), "val": self._split(wildcards, "val")}

    def meansparse_inputs(self, wildcards) -> dict[str, str]:
        return self._defense_inputs(wildcards, self.plan.defended)

    def meansparse_settings(self, wildcards) -> dict:
        entry = self.plan.defended[wildcards.model]
        return entry["settings"] | {"seed": entry["seed"]}

    def ig_defense_inputs(self, wildcards) -> dict[str, str]:
        return self._defense_inputs(wildcards, self.plan.ig_defended)

    def ig_defense_settings(self, wildcards) -> dict:
        entry = self.plan.ig_defended[wildcards.model]
        return entry["settings"] | {"seed": entry["seed"]}

    def ig_analysis_settings(self, wildcards) -> dict:
        analysis = self.config["ig_defense"]["analysis"]
        return self._seeded({"attack": self.config["attacks"][analysis["attack"]], "n_images": analysis["n_images"]})

    def transfer_inputs(self, wildcards) -> dict[str, str]:
        """The defended model, its base model's pair set under the attack, and both white-box records."""
        base_id = self.plan.defended[wildcards.model]["base_id"]
        name = self.plan.robustness[wildcards.attack]["name"]
        record = f"results/{wildcards.data}/robustness/{{}}/{wildcards.attack}.csv"
        return {
            "model": self.plan.model_path(wildcards.model),
            "pairs": self.plan.pairs_path(base_id, self.plan.attack_id[name]),
            "whitebox": record.format(wildcards.model),
            "base_whitebox": record.format(base_id),
        }

    def transfer_settings(self, wildcards) -> dict:
        entry = self.plan.defended[wildcards.model]
        return {"attack": self.plan.robustness[wildcards.attack]["name"],
                "base_name": self.plan.model_label(entry["base_id"]), "seed": entry["seed"]}

    def transfer_labels(self, wildcards) -> dict[str, str]:
        """Attack name -> its table_iii column label."""
        return {name: label for label, name in self.config["robustness"]["table_iii"].items()
                if name in self.plan.transfer}

    def defense_findings_inputs(self, wildcards) -> dict:
        out = {
            "final": self.plan.run_file("tables/final_robustness.csv"),
            "settings": self.plan.run_file("tables/final_robustness_settings.csv"),
            "records": self.plan.final_table_records(),  # per-image results for the paired tests
            "sensitivity": [self.plan.run_file(f"figures/sensitivity_by_training_{arch}.csv")
                            for arch in self.plan.archs],
        }
        if self.plan.transfer_rows():
            out["transfer"] = self.plan.run_file("tables/transfer_check.csv")
        return out

    def layer_range_models(self, wildcards) -> dict:
        """Model label -> {arch, first_layer, n_layers} of the layer-range sweep, in table order."""
        return {self.plan.model_label(m["model_id"]): {"arch": m["arch"], "first_layer": m["first_layer"],
                                                       "n_layers": len(m["layers"])}
                for m in self.plan.layer_range}

    def layer_range_attack_labels(self, wildcards) -> dict[str, str]:
        """Attack name -> column label of the layer-range table (its Table III label where it has one)."""
        labels = {name: label for label, name in self.config["robustness"]["table_iii"].items()}
        return {name: labels.get(name, name) for name in self.config["sns_layer_range"]["attacks"]}

    # -------------------------------------------------------------------------------------- report
    def landing_page_inputs(self, wildcards) -> dict[str, str]:
        return self.plan.landing_page_inputs()

    def landing_page_links(self, wildcards) -> list[str]:
        """Report items the landing page links to (names of files marked for the report)."""
        names = {"robustness": ["robustness.html", "robustness_settings.html"], "final": ["final_robustness.html"],
                 "findings": ["findings.html"]}
        return [n for key in self.plan.landing_page_inputs() for n in names[key]]
