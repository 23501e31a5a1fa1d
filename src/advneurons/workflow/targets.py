"""The files a run makes, stage by stage: what rule `all` asks for, given a :class:`Plan`.

Each function lists only what the config turns on, so a disabled stage schedules no job.
"""

from __future__ import annotations

import os

from advneurons.config import settings
from advneurons.workflow.plan import Plan


def pair_sets(plan: Plan) -> list[str]:
    return [plan.pairs_path(m, plan.attack_id[name]) for m in plan.analysed
            for name in plan.config["evaluation"]["attacks"]]


def robustness(plan: Plan) -> list[str]:
    config, names = plan.config, []
    if config["robustness"]["table_iii"]:
        names += ["tables/robustness.csv", "tables/robustness.md"]
    if config["robustness"]["table_i"]:
        names += ["tables/robustness_table_i.csv", "tables/robustness_table_i.md"]
    if config["sweeps"]["enabled"]:
        names += ["tables/pgd_sweep.csv", "figures/pgd_sweep_steps.png"]
    if plan.all_records():
        names.append("tables/results_long.csv")
    return [plan.run_file(name) for name in names]


def sensitivity(plan: Plan) -> list[str]:
    """Every analysed and external model's sensitivity table and its top-percent channel lists."""
    files = []
    for m in plan.tabled:
        files.append(plan.sensitivity_file(m))
        files += [plan.top_file(m, percent) for percent in plan.config["sensitivity"]["top_percent"]]
    return files


def sns(plan: Plan) -> list[str]:
    if not plan.sns["enabled"]:
        return []
    return [
        plan.run_file("findings.md"),
        *[plan.sns_arch_file("curves_figure", a) for a in plan.archs],
        *[plan.sns_model_file("importance_figure", m) for m in plan.tabled],
    ]


def psn(plan: Plan) -> list[str]:
    """Every PSN product of each scored model: top units, deviation, attack, heatmaps, agreement."""
    psn = plan.psn
    if not psn["enabled"]:
        return []
    percents = "-".join(f"{p:g}" for p in psn["top_percent"])
    agreement = (f"agreement_{plan.sensitivity_attack}-{plan.sensitivity_form}"
                 f"_top{psn['agreement']['k_percent']:g}pct")
    files = []
    for model_id, entry in plan.psn_models.items():
        ids = plan.psn_ids(entry)
        base = f"results/{plan.data_id}/psn/{model_id}/{ids['scores']}"
        files += [f"{base}/top{percents}pct.csv.gz", f"{base}/{ids['deviation']}.png",
                  f"{base}/{ids['attack']}.png", f"{base}/{agreement}.png"]
        files += [f"{base}/{ids['heatmaps']}/{layer}.png" for layer in settings.psn_heatmap_layers(plan.config, entry)]
    return files


def defenses(plan: Plan) -> list[str]:
    if not plan.config["defenses"]["final_table"]:
        return []
    files = [plan.run_file(f"tables/final_robustness.{ext}") for ext in ("csv", "md", "tex")]
    files += [plan.run_file(f"figures/sensitivity_by_training_{arch}.png") for arch in plan.archs]
    if plan.transfer_rows():
        files.append(plan.run_file("tables/transfer_check.md"))
    if plan.layer_range:
        files.append(plan.run_file("tables/sns_layer_range.md"))
    return files + [f for m in plan.ig_defended for f in plan.ig_analysis_files(m)]


def final_outputs(plan: Plan) -> list[str]:
    """Everything rule `all` asks for."""
    return [*pair_sets(plan), *robustness(plan), *sensitivity(plan), *sns(plan), *psn(plan), *defenses(plan),
            plan.landing_page]


def results_guide(plan: Plan) -> str:
    """What the end of a successful run prints: where to look first (only what exists)."""
    lines = ["", f"Results of this run ({plan.config['run']}): {plan.run_dir}/",
             "(each config writes its own folder under results/runs/; earlier runs' folders are left as they were)"]
    for name, what in (
        ("tables/robustness.md", "robustness table (TIP Table III layout); every cell's settings beside it"),
        ("tables/final_robustness.md", "models and defenses x attack suite"),
        ("findings.md", "each paper claim with its verdict and statistic"),
        ("tables/results_long.csv", "every accuracy with its interval and lineage (for pandas)"),
        ("tables", "all tables (CSV + Markdown)"),
        ("figures", "all figures"),
    ):
        if os.path.exists(plan.run_file(name)):
            lines.append(f"  {plan.run_file(name):58s} {what}")
    lines.append(f"  results/{plan.data_id}/               every intermediate, in folders named by the settings "
                 "that made it")
    lines.append("  snakemake --report report.html          one HTML page with every table and figure and its "
                 "provenance")
    return "\n".join(lines)
