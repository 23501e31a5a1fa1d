# Stage 4: per-channel neuron sensitivity of every layer (TIP Eq 1), and the top-k% sensitive channels.


rule neuron_sensitivity:
    input:
        model=rules.train_model.output.model,
        pairs=rules.attack_pairs.output.pairs,
    output:
        table=report(
            "results/{data}/sensitivity/{model}/{attack}/sensitivity_{form}.csv",
            caption="../report/sensitivity.rst",
            category="Neuron sensitivity",
            subcategory="{model}",
            labels={"model": "{model}", "table": "all channels ({form})"},
        ),
        meta="results/{data}/sensitivity/{model}/{attack}/sensitivity_{form}.json",
    log:
        "logs/{data}/neuron_sensitivity/{model}/{attack}_{form}.log",
    benchmark:
        "benchmarks/{data}/neuron_sensitivity/{model}/{attack}_{form}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        code=code_version("neuron_sensitivity"),
        batch_size=config["sensitivity"]["batch_size"],
        normalise=jobs.sensitivity_normalised,
        site=jobs.sensitivity_site,
    message:
        "neuron sensitivity ({wildcards.form}): {wildcards.model} under {wildcards.attack}"
    script:
        "../workflow_scripts/neuron_sensitivity.py"


rule sensitive_channels:
    input:
        rules.neuron_sensitivity.output.table,
    output:
        report(
            "results/{data}/sensitivity/{model}/{attack}/top{percent}pct_{form}.csv",
            caption="../report/top_channels.rst",
            category="Neuron sensitivity",
            subcategory="{model}",
            labels={"model": "{model}", "table": "top {percent}% ({form})"},
        ),
    log:
        "logs/{data}/sensitive_channels/{model}/{attack}_top{percent}pct_{form}.log",
    benchmark:
        "benchmarks/{data}/sensitive_channels/{model}/{attack}_top{percent}pct_{form}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=code_version("sensitive_channels"),
    message:
        "top {wildcards.percent}% sensitive channels: {wildcards.model}"
    script:
        "../workflow_scripts/sensitive_channels.py"
