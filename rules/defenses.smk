# Stage 8: models and defenses side by side: the final robustness table over the attack suite (TIP
# Tables III/IV shape) and per-layer neuron sensitivity by training (TIP Fig 17).


rule final_robustness_table:
    input:
        records=robustness_records(
            config["robustness"]["table_iii"].values(), models=EVALUATED
        ),
    output:
        csv=report(
            "results/tables/final_robustness.csv",
            caption="../report/final_robustness.rst",
            category="Defenses",
        ),
        md="results/tables/final_robustness.md",
        tex="results/tables/final_robustness.tex",
        settings="results/tables/final_robustness_settings.csv",
    log:
        "logs/final_robustness_table.log",
    benchmark:
        "benchmarks/final_robustness_table.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("defense_tables"),
        columns=config["robustness"]["table_iii"],
        models=final_table_models,
        dataset=DATASET,
    script:
        "../workflow_scripts/final_robustness_table.py"


rule sensitivity_by_training:
    input:
        unpack(arch_all_sensitivity_files),
    output:
        csv="results/figures/sensitivity_by_training_{arch}.csv",
        png=report(
            "results/figures/sensitivity_by_training_{arch}.png",
            caption="../report/sensitivity_by_training.rst",
            category="Defenses",
            labels={"architecture": "{arch}"},
        ),
    log:
        "logs/sensitivity_by_training/{arch}.log",
    benchmark:
        "benchmarks/sensitivity_by_training/{arch}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("defense_tables"),
    script:
        "../workflow_scripts/sensitivity_by_training.py"


rule meansparse_model:
    input:
        unpack(meansparse_inputs),
    output:
        model="results/{data}/defended/{model}/model.pt",
        sweep=report(
            "results/{data}/defended/{model}/alpha_sweep.csv",
            caption="../report/meansparse_sweep.rst",
            category="Defenses",
            labels={"model": "{model}", "table": "MeanSparse alpha sweep"},
        ),
        md="results/{data}/defended/{model}/alpha_sweep.md",
        meta="results/{data}/defended/{model}/metadata.json",
    log:
        "logs/{data}/meansparse_model/{model}.log",
    benchmark:
        "benchmarks/{data}/meansparse_model/{model}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        code=code_version("meansparse"),
        meansparse=meansparse_settings,
        batch_size=config["robustness"]["batch_size"],
    script:
        "../workflow_scripts/meansparse_model.py"


rule defense_findings:
    input:
        final="results/tables/final_robustness.csv",
        sensitivity=expand(
            "results/figures/sensitivity_by_training_{arch}.csv", arch=ARCHS
        ),
    output:
        "results/tables/defense_findings.json",
    log:
        "logs/defense_findings.log",
    benchmark:
        "benchmarks/defense_findings.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=code_version("defense_tables"),
        archs=ARCHS,
    script:
        "../workflow_scripts/defense_findings.py"
