# Stage 5: robustness table over all models and evaluation attacks.


rule robustness_table:
    input:
        pairs=evaluation_pairs(),
    output:
        csv=report(
            "results/tables/robustness.csv",
            caption="../report/robustness.rst",
            category="Robustness",
        ),
        md="results/tables/robustness.md",
    log:
        "logs/robustness_table.log",
    benchmark:
        "benchmarks/robustness_table.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("evaluation"),
        entries=robustness_entries,
        dataset=DATASET,
    script:
        "../workflow_scripts/robustness_table.py"
