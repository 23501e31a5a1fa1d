# Stage 8: models and defenses side by side: the final robustness table over the attack suite (TIP
# Tables III/IV shape) and per-layer neuron sensitivity by training (TIP Fig 17).


rule final_robustness_table:
    input:
        records=plan.final_table_records(),
        sidecars=plan.record_sidecars(plan.final_table_records()),
    output:
        csv=plan.run_file("tables/final_robustness.csv"),
        md=plan.run_file("tables/final_robustness.md"),
        html=report(
            plan.run_file("tables/final_robustness.html"),
            caption="../report/final_robustness.rst",
            category="Defenses",
        ),
        tex=plan.run_file("tables/final_robustness.tex"),
        settings=plan.run_file("tables/final_robustness_settings.csv"),
    log:
        plan.run_log("final_robustness_table"),
    benchmark:
        plan.run_log("final_robustness_table", "tsv")
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("final_robustness_table"),
        columns=config["robustness"]["table_iii"],
        models=jobs.final_table_models,
        dataset=plan.dataset,
    message:
        "final robustness table (every model and defense)"
    script:
        "../workflow_scripts/final_robustness_table.py"


rule sensitivity_by_training:
    input:
        unpack(jobs.arch_all_sensitivity_files),
    output:
        csv=plan.run_file("figures/sensitivity_by_training_{arch}.csv"),
        png=report(
            plan.run_file("figures/sensitivity_by_training_{arch}.png"),
            caption="../report/sensitivity_by_training.rst",
            category="Defenses",
            labels={"architecture": "{arch}"},
        ),
        pdf=plan.run_file("figures/sensitivity_by_training_{arch}.pdf"),
    log:
        plan.run_log("sensitivity_by_training/{arch}"),
    benchmark:
        plan.run_log("sensitivity_by_training/{arch}", "tsv")
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("sensitivity_by_training"),
    message:
        "sensitivity by training method: {wildcards.arch}"
    script:
        "../workflow_scripts/sensitivity_by_training.py"


rule meansparse_model:
    input:
        unpack(jobs.meansparse_inputs),
    output:
        model="results/{data}/defended/{model}/model.pt",
        sweep="results/{data}/defended/{model}/alpha_sweep.csv",
        md="results/{data}/defended/{model}/alpha_sweep.md",
        html=report(
            "results/{data}/defended/{model}/alpha_sweep.html",
            caption="../report/meansparse_sweep.rst",
            category="Defenses",
            labels={"model": "{model}", "table": "MeanSparse alpha sweep"},
        ),
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
        code=code_version("meansparse_model"),
        meansparse=jobs.meansparse_settings,
        batch_size=config["robustness"]["batch_size"],
    message:
        "MeanSparse around {wildcards.model}"
    script:
        "../workflow_scripts/meansparse_model.py"


rule ig_defense_model:
    input:
        unpack(jobs.ig_defense_inputs),
    output:
        model="results/{data}/ig_defense/{model}/model.pt",
        ranking="results/{data}/ig_defense/{model}/lo_ir_ranking.csv",
        meta="results/{data}/ig_defense/{model}/metadata.json",
    log:
        "logs/{data}/ig_defense_model/{model}.log",
    benchmark:
        "benchmarks/{data}/ig_defense_model/{model}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        code=code_version("ig_defense_model"),
        ig_defense=jobs.ig_defense_settings,
        batch_size=config["robustness"]["batch_size"],
    message:
        "IG-Defense around {wildcards.model}"
    script:
        "../workflow_scripts/ig_defense_model.py"


rule ig_defense_analysis:
    input:
        model=rules.ig_defense_model.output.model,
        test=rules.prepare_dataset.output.test,
    output:
        per_image="results/{data}/ig_defense/{model}/{analysis}_per_image.csv",
        summary="results/{data}/ig_defense/{model}/{analysis}_summary.csv",
        md="results/{data}/ig_defense/{model}/{analysis}_summary.md",
        html=report(
            "results/{data}/ig_defense/{model}/{analysis}_summary.html",
            caption="../report/ig_defense_analysis.rst",
            category="Defenses",
            labels={"model": "{model}", "table": "IG-Defense channel groups"},
        ),
        png=report(
            "results/{data}/ig_defense/{model}/{analysis}.png",
            caption="../report/ig_defense_analysis.rst",
            category="Defenses",
            labels={"model": "{model}", "figure": "IG-Defense channel groups"},
        ),
        pdf="results/{data}/ig_defense/{model}/{analysis}.pdf",
        meta="results/{data}/ig_defense/{model}/{analysis}.json",
    log:
        "logs/{data}/ig_defense_analysis/{model}/{analysis}.log",
    benchmark:
        "benchmarks/{data}/ig_defense_analysis/{model}/{analysis}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        code=code_version("ig_defense_analysis"),
        analysis=jobs.ig_analysis_settings,
        model_name=jobs.model_name,
        batch_size=config["robustness"]["batch_size"],
    message:
        "IG-Defense analysis: {wildcards.model}"
    script:
        "../workflow_scripts/ig_defense_analysis.py"


rule transfer_check:
    input:
        unpack(jobs.transfer_inputs),
    output:
        csv="results/{data}/transfer/{model}/{attack}.csv",
        meta="results/{data}/transfer/{model}/{attack}.json",
    log:
        "logs/{data}/transfer_check/{model}/{attack}.log",
    benchmark:
        "benchmarks/{data}/transfer_check/{model}/{attack}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        code=code_version("transfer_check"),
        check=jobs.transfer_settings,
        model_name=jobs.model_name,
        batch_size=config["robustness"]["batch_size"],
    message:
        "transfer check: {wildcards.model} under {wildcards.attack}"
    script:
        "../workflow_scripts/transfer_check.py"


rule transfer_table:
    input:
        rows=plan.transfer_rows(),
    output:
        csv=plan.run_file("tables/transfer_check.csv"),
        md=plan.run_file("tables/transfer_check.md"),
        html=report(
            plan.run_file("tables/transfer_check.html"),
            caption="../report/transfer_check.rst",
            category="Defenses",
        ),
    log:
        plan.run_log("transfer_table"),
    benchmark:
        plan.run_log("transfer_table", "tsv")
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=code_version("transfer_table"),
        labels=jobs.transfer_labels,
    message:
        "transfer check table"
    script:
        "../workflow_scripts/transfer_table.py"


rule defense_findings:
    input:
        unpack(jobs.defense_findings_inputs),
    output:
        plan.run_file("tables/defense_findings.json"),
    log:
        plan.run_log("defense_findings"),
    benchmark:
        plan.run_log("defense_findings", "tsv")
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=code_version("defense_findings"),
        archs=plan.archs,
        trainings=config["training"],
    message:
        "defense claims"
    script:
        "../workflow_scripts/defense_findings.py"


rule sns_layer_range:
    input:
        records=plan.layer_range_records(),
    output:
        csv=plan.run_file("tables/sns_layer_range.csv"),
        md=plan.run_file("tables/sns_layer_range.md"),
        html=report(
            plan.run_file("tables/sns_layer_range.html"),
            caption="../report/sns_layer_range.rst",
            category="Defenses",
        ),
        png=report(
            plan.run_file("figures/sns_layer_range.png"),
            caption="../report/sns_layer_range.rst",
            category="Defenses",
        ),
        pdf=plan.run_file("figures/sns_layer_range.pdf"),
    log:
        plan.run_log("sns_layer_range"),
    benchmark:
        plan.run_log("sns_layer_range", "tsv")
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=code_version("sns_layer_range"),
        models=jobs.layer_range_models,
        attacks=jobs.layer_range_attack_labels,
        training=config["sns_layer_range"]["training"],
    message:
        "SNS layer-range table and figure"
    script:
        "../workflow_scripts/sns_layer_range.py"
