# Stage 7: propagation-sensitive neurons (PSN): verified-bound scores of single units (auto_LiRPA), the
# top units per layer, and the analyses built on them: activation deviation, attacking PSNs, focus
# heatmaps, and agreement with the channel-level neuron sensitivity of the same model.


rule psn_scores:
    input:
        model=rules.train_model.output.model,
        test=rules.prepare_dataset.output.test,
    output:
        scores="results/{data}/psn/{model}/{psn}/scores.csv.gz",
        meta="results/{data}/psn/{model}/{psn}/scores.json",
    log:
        "logs/{data}/psn_scores/{model}/{psn}.log",
    benchmark:
        "benchmarks/{data}/psn_scores/{model}/{psn}.tsv"
    # the longest job of a CIFAR-10 run (ResNet18's CROWN bounds: hours on a GPU, 9 min in the rehearsal),
    # which waits on one model only: started as soon as that model exists, it no longer ends the run alone
    priority: 5
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=plan.psn["mem_budget_mb"] + 3000,
        runtime=240,
    params:
        code=code_version("psn_scores"),
        scoring=jobs.psn_score_settings,
    message:
        "PSN scores (auto_LiRPA bounds): {wildcards.model}"
    script:
        "../workflow_scripts/psn_scores.py"


rule psn_top_units:
    input:
        rules.psn_scores.output.scores,
    output:
        report(
            "results/{data}/psn/{model}/{psn}/top{percents}pct.csv.gz",
            caption="../report/psn_top_units.rst",
            category="Propagation-sensitive neurons",
            subcategory="{model}",
            labels={"model": "{model}", "table": "top units"},
        ),
    log:
        "logs/{data}/psn_top_units/{model}/{psn}_top{percents}pct.log",
    benchmark:
        "benchmarks/{data}/psn_top_units/{model}/{psn}_top{percents}pct.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("psn_top_units"),
        percents=lambda wildcards: [float(p) for p in wildcards.percents.split("-")],
    message:
        "top PSN units: {wildcards.model}"
    script:
        "../workflow_scripts/psn_top_units.py"


rule psn_deviation:
    input:
        model=rules.train_model.output.model,
        test=rules.prepare_dataset.output.test,
        scores=rules.psn_scores.output.scores,
    output:
        layers="results/{data}/psn/{model}/{psn}/{deviation}_layers.csv",
        blocks="results/{data}/psn/{model}/{psn}/{deviation}_blocks.csv",
        png=report(
            "results/{data}/psn/{model}/{psn}/{deviation}.png",
            caption="../report/psn_deviation.rst",
            category="Propagation-sensitive neurons",
            subcategory="Activation deviation",
            labels={"model": "{model}"},
        ),
        pdf="results/{data}/psn/{model}/{psn}/{deviation}.pdf",
        meta="results/{data}/psn/{model}/{psn}/{deviation}.json",
    log:
        "logs/{data}/psn_deviation/{model}/{psn}_{deviation}.log",
    benchmark:
        "benchmarks/{data}/psn_deviation/{model}/{psn}_{deviation}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        code=code_version("psn_deviation"),
        deviation=jobs.psn_deviation_settings,
        batch_size=plan.psn["batch_size"],
    message:
        "PSN deviation: {wildcards.model}"
    script:
        "../workflow_scripts/psn_deviation.py"


rule psn_attack:
    input:
        model=rules.train_model.output.model,
        test=rules.prepare_dataset.output.test,
        scores=rules.psn_scores.output.scores,
    output:
        csv="results/{data}/psn/{model}/{psn}/{noise}.csv",
        md="results/{data}/psn/{model}/{psn}/{noise}.md",
        html=report(
            "results/{data}/psn/{model}/{psn}/{noise}.html",
            caption="../report/psn_attack.rst",
            category="Propagation-sensitive neurons",
        ),
        png=report(
            "results/{data}/psn/{model}/{psn}/{noise}.png",
            caption="../report/psn_attack.rst",
            category="Propagation-sensitive neurons",
            subcategory="Attacking PSNs",
            labels={"model": "{model}"},
        ),
        pdf="results/{data}/psn/{model}/{psn}/{noise}.pdf",
        meta="results/{data}/psn/{model}/{psn}/{noise}.json",
    log:
        "logs/{data}/psn_attack/{model}/{psn}_{noise}.log",
    benchmark:
        "benchmarks/{data}/psn_attack/{model}/{psn}_{noise}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        code=code_version("psn_attack"),
        attack=jobs.psn_attack_settings,
        batch_size=plan.psn["batch_size"],
    message:
        "attacking PSNs: {wildcards.model}"
    script:
        "../workflow_scripts/psn_attack.py"


rule psn_heatmaps:
    input:
        model=rules.train_model.output.model,
        test=rules.prepare_dataset.output.test,
        scores=rules.psn_scores.output.scores,
    output:
        png=report(
            "results/{data}/psn/{model}/{psn}/{heatmaps}/{layer}.png",
            caption="../report/psn_heatmaps.rst",
            category="Propagation-sensitive neurons",
            subcategory="Focus regions",
            labels={"model": "{model}", "layer": "{layer}"},
        ),
        pdf="results/{data}/psn/{model}/{psn}/{heatmaps}/{layer}.pdf",
        meta="results/{data}/psn/{model}/{psn}/{heatmaps}/{layer}.json",
    log:
        "logs/{data}/psn_heatmaps/{model}/{psn}_{heatmaps}_{layer}.log",
    benchmark:
        "benchmarks/{data}/psn_heatmaps/{model}/{psn}_{heatmaps}_{layer}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        code=code_version("psn_heatmaps"),
        heatmaps=jobs.psn_heatmap_settings,
    message:
        "PSN heatmaps: {wildcards.model} {wildcards.layer}"
    script:
        "../workflow_scripts/psn_heatmaps.py"


rule psn_agreement:
    input:
        scores=rules.psn_scores.output.scores,
        sensitivity=rules.neuron_sensitivity.output.table,
    output:
        csv="results/{data}/psn/{model}/{psn}/agreement_{attack}-{form}_top{percent}pct.csv",
        md="results/{data}/psn/{model}/{psn}/agreement_{attack}-{form}_top{percent}pct.md",
        html=report(
            "results/{data}/psn/{model}/{psn}/agreement_{attack}-{form}_top{percent}pct.html",
            caption="../report/psn_agreement.rst",
            category="Propagation-sensitive neurons",
        ),
        png=report(
            "results/{data}/psn/{model}/{psn}/agreement_{attack}-{form}_top{percent}pct.png",
            caption="../report/psn_agreement.rst",
            category="Propagation-sensitive neurons",
            subcategory="PSN vs neuron sensitivity",
            labels={"model": "{model}"},
        ),
        pdf="results/{data}/psn/{model}/{psn}/agreement_{attack}-{form}_top{percent}pct.pdf",
    log:
        "logs/{data}/psn_agreement/{model}/{psn}_{attack}-{form}_top{percent}pct.log",
    benchmark:
        "benchmarks/{data}/psn_agreement/{model}/{psn}_{attack}-{form}_top{percent}pct.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("psn_agreement"),
    message:
        "PSN vs sensitivity: {wildcards.model}, top {wildcards.percent}%"
    script:
        "../workflow_scripts/psn_agreement.py"
