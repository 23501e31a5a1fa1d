# Stage 5: accuracy under the attack suite (one job per model and attack), the papers' tables, and the
# L-inf PGD sweeps over steps and eps.


rule evaluate_attack:
    input:
        model=jobs.evaluated_model,
        test=rules.prepare_dataset.output.test,
    output:
        records="results/{data}/robustness/{model}/{attack}.csv",
        images="results/{data}/robustness/{model}/{attack}.images.csv.gz",
        meta="results/{data}/robustness/{model}/{attack}.json",
    log:
        "logs/{data}/evaluate_attack/{model}/{attack}.log",
    benchmark:
        "benchmarks/{data}/evaluate_attack/{model}/{attack}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        code=code_version("evaluate_attack"),
        evaluation=jobs.robustness_settings,
        model_name=jobs.model_name,
        batch_size=config["robustness"]["batch_size"],
    message:
        "robust accuracy: {wildcards.model} under {wildcards.attack}"
    script:
        "../workflow_scripts/evaluate_attack.py"


rule robustness_table:
    input:
        records=plan.robustness_records(config["robustness"]["table_iii"].values()),
        sidecars=plan.record_sidecars(
            plan.robustness_records(config["robustness"]["table_iii"].values())
        ),
    output:
        csv=plan.run_file("tables/robustness.csv"),
        md=plan.run_file("tables/robustness.md"),
        html=report(
            plan.run_file("tables/robustness.html"),
            caption="../report/robustness.rst",
            category="Robustness",
        ),
        settings=plan.run_file("tables/robustness_settings.csv"),
        settings_md=plan.run_file("tables/robustness_settings.md"),
        settings_html=report(
            plan.run_file("tables/robustness_settings.html"),
            caption="../report/robustness_settings.rst",
            category="Robustness",
        ),
    log:
        plan.run_log("robustness_table"),
    benchmark:
        plan.run_log("robustness_table", "tsv")
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("robustness_table"),
        layout="table_iii",
        columns=config["robustness"]["table_iii"],
        dataset=plan.dataset,
    message:
        "robustness table (TIP Table III layout)"
    script:
        "../workflow_scripts/robustness_table.py"


rule robustness_table_i:
    input:
        records=plan.robustness_records(config["robustness"]["table_i"]),
        sidecars=plan.record_sidecars(
            plan.robustness_records(config["robustness"]["table_i"])
        ),
    output:
        csv=plan.run_file("tables/robustness_table_i.csv"),
        md=plan.run_file("tables/robustness_table_i.md"),
        html=report(
            plan.run_file("tables/robustness_table_i.html"),
            caption="../report/robustness_table_i.rst",
            category="Robustness",
        ),
        settings=plan.run_file("tables/robustness_table_i_settings.csv"),
        settings_md=plan.run_file("tables/robustness_table_i_settings.md"),
        settings_html=report(
            plan.run_file("tables/robustness_table_i_settings.html"),
            caption="../report/robustness_settings.rst",
            category="Robustness",
        ),
    log:
        plan.run_log("robustness_table_i"),
    benchmark:
        plan.run_log("robustness_table_i", "tsv")
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("robustness_table"),
        layout="table_i",
        columns=None,
        dataset=plan.dataset,
    message:
        "robustness table (TIP Table I layout)"
    script:
        "../workflow_scripts/robustness_table.py"


rule pgd_sweep:
    input:
        model=jobs.evaluated_model,
        test=rules.prepare_dataset.output.test,
    output:
        csv="results/{data}/sweeps/{model}/{sweep}.csv",
        meta="results/{data}/sweeps/{model}/{sweep}.json",
    log:
        "logs/{data}/pgd_sweep/{model}/{sweep}.log",
    benchmark:
        "benchmarks/{data}/pgd_sweep/{model}/{sweep}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        code=code_version("pgd_sweep"),
        sweep=jobs.sweep_settings,
        model_name=jobs.model_name,
    message:
        "PGD sweep: {wildcards.model}"
    script:
        "../workflow_scripts/pgd_sweep.py"


rule sweep_figures:
    input:
        sweeps=plan.sweep_files(),
    output:
        csv=plan.run_file("tables/pgd_sweep.csv"),
        steps_png=report(
            plan.run_file("figures/pgd_sweep_steps.png"),
            caption="../report/pgd_sweep_steps.rst",
            category="Robustness",
        ),
        steps_pdf=plan.run_file("figures/pgd_sweep_steps.pdf"),
        eps_png=report(
            plan.run_file("figures/pgd_sweep_eps.png"),
            caption="../report/pgd_sweep_eps.rst",
            category="Robustness",
        ),
        eps_pdf=plan.run_file("figures/pgd_sweep_eps.pdf"),
    log:
        plan.run_log("sweep_figures"),
    benchmark:
        plan.run_log("sweep_figures", "tsv")
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("sweep_figures"),
    message:
        "PGD sweep figures"
    script:
        "../workflow_scripts/sweep_figures.py"


rule results_long:
    input:
        records=plan.all_records(),
        sidecars=plan.record_sidecars(plan.all_records()),
    output:
        csv=plan.run_file("tables/results_long.csv"),
    log:
        plan.run_log("results_long"),
    benchmark:
        plan.run_log("results_long", "tsv")
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("results_long"),
        models=plan.long_table_models(),
    message:
        "every accuracy of the run in one long table"
    script:
        "../workflow_scripts/results_long.py"
