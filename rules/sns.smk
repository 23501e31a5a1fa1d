# Stage 6: the neuron-sensitivity analyses of the SNS papers: targeted sets, important vs sensitive
# neurons, cross-class similarity per layer, suppression, sensitivity ratios, and findings.md.


rule targeted_pairs:
    input:
        model=rules.train_model.output.model,
        test=rules.prepare_dataset.output.test,
    output:
        pairs="results/{data}/sns/{model}/{targeted}/pairs.npz",
        meta="results/{data}/sns/{model}/{targeted}/pairs.json",
    log:
        "logs/{data}/targeted_pairs/{model}/{targeted}.log",
    benchmark:
        "benchmarks/{data}/targeted_pairs/{model}/{targeted}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        code=code_version("targeted_pairs"),
        targeted=jobs.targeted_settings,
        batch_size=plan.sns["batch_size"],
    message:
        "targeted adversarial pairs: {wildcards.model}"
    script:
        "../workflow_scripts/targeted_pairs.py"


rule targeted_neurons:
    input:
        model=rules.train_model.output.model,
        pairs=rules.targeted_pairs.output.pairs,
    output:
        sensitivity="results/{data}/sns/{model}/{targeted}/sensitivity_by_target_k{k}.csv",
        importance="results/{data}/sns/{model}/{targeted}/importance_by_target_k{k}.csv",
        meta="results/{data}/sns/{model}/{targeted}/neurons_k{k}.json",
    log:
        "logs/{data}/targeted_neurons/{model}/{targeted}_k{k}.log",
    benchmark:
        "benchmarks/{data}/targeted_neurons/{model}/{targeted}_k{k}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        code=code_version("targeted_neurons"),
        batch_size=plan.sns["batch_size"],
        site=config["sensitivity"]["site"],
    message:
        "targeted sensitive neurons: {wildcards.model}"
    script:
        "../workflow_scripts/targeted_neurons.py"


rule importance_report:
    input:
        sensitivity=rules.targeted_neurons.output.sensitivity,
        importance=rules.targeted_neurons.output.importance,
    output:
        csv="results/{data}/sns/{model}/{targeted}/importance_k{k}.csv",
        md="results/{data}/sns/{model}/{targeted}/importance_k{k}.md",
        html=report(
            "results/{data}/sns/{model}/{targeted}/importance_k{k}.html",
            caption="../report/importance.rst",
            category="Sensitive neurons",
        ),
        summary="results/{data}/sns/{model}/{targeted}/importance_k{k}_summary.csv",
        png=report(
            "results/{data}/sns/{model}/{targeted}/importance_k{k}.png",
            caption="../report/importance.rst",
            category="Sensitive neurons",
            subcategory="Importance vs sensitivity",
            labels={"model": "{model}"},
        ),
        pdf="results/{data}/sns/{model}/{targeted}/importance_k{k}.pdf",
        meta="results/{data}/sns/{model}/{targeted}/importance_k{k}.json",
    log:
        "logs/{data}/importance_report/{model}/{targeted}_k{k}.log",
    benchmark:
        "benchmarks/{data}/importance_report/{model}/{targeted}_k{k}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("importance_report"),
        title=jobs.model_name,
    message:
        "importance of sensitive neurons: {wildcards.model}"
    script:
        "../workflow_scripts/importance_report.py"


rule layer_similarity:
    input:
        sensitivity=expand(
            "results/{{data}}/sns/{{model}}/{{targeted}}/sensitivity_by_target_k{k}.csv",
            k=plan.sns["targeted"]["k"],
        ),
    output:
        csv="results/{data}/sns/{model}/{targeted}/layer_similarity_top{percent}pct.csv",
        md="results/{data}/sns/{model}/{targeted}/layer_similarity_top{percent}pct.md",
        html=report(
            "results/{data}/sns/{model}/{targeted}/layer_similarity_top{percent}pct.html",
            caption="../report/layer_similarity.rst",
            category="Sensitive neurons",
        ),
        png=report(
            "results/{data}/sns/{model}/{targeted}/layer_similarity_top{percent}pct.png",
            caption="../report/layer_similarity.rst",
            category="Sensitive neurons",
            subcategory="Similarity across target classes",
            labels={"model": "{model}"},
        ),
        pdf="results/{data}/sns/{model}/{targeted}/layer_similarity_top{percent}pct.pdf",
        meta="results/{data}/sns/{model}/{targeted}/layer_similarity_top{percent}pct.json",
    log:
        "logs/{data}/layer_similarity/{model}/{targeted}_top{percent}pct.log",
    benchmark:
        "benchmarks/{data}/layer_similarity/{model}/{targeted}_top{percent}pct.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("layer_similarity"),
        title=jobs.model_name,
    message:
        "layer similarity of sensitive neurons: {wildcards.model}"
    script:
        "../workflow_scripts/layer_similarity.py"


rule suppression_study:
    input:
        model=rules.train_model.output.model,
        test=rules.prepare_dataset.output.test,
        sensitivity=jobs.model_sensitivity_file,
    output:
        csv="results/{data}/sns/{model}/{attack}-{form}/{suppression}.csv",
        summary="results/{data}/sns/{model}/{attack}-{form}/{suppression}_summary.csv",
        md="results/{data}/sns/{model}/{attack}-{form}/{suppression}.md",
        html=report(
            "results/{data}/sns/{model}/{attack}-{form}/{suppression}.html",
            caption="../report/suppression.rst",
            category="Sensitive neurons",
        ),
        png=report(
            "results/{data}/sns/{model}/{attack}-{form}/{suppression}.png",
            caption="../report/suppression.rst",
            category="Sensitive neurons",
            subcategory="Suppression",
            labels={"model": "{model}"},
        ),
        pdf="results/{data}/sns/{model}/{attack}-{form}/{suppression}.pdf",
        meta="results/{data}/sns/{model}/{attack}-{form}/{suppression}.json",
    log:
        "logs/{data}/suppression_study/{model}/{attack}-{form}/{suppression}.log",
    benchmark:
        "benchmarks/{data}/suppression_study/{model}/{attack}-{form}/{suppression}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        code=code_version("suppression_study"),
        suppression=jobs.suppression_settings,
        batch_size=plan.sns["batch_size"],
        title=jobs.model_name,
    message:
        "suppression study: {wildcards.model}"
    script:
        "../workflow_scripts/suppression_study.py"


rule sensitivity_ratios:
    input:
        model=rules.train_model.output.model,
        test=rules.prepare_dataset.output.test,
    output:
        csv="results/{data}/sns/{model}/{ratios}.csv",
        meta="results/{data}/sns/{model}/{ratios}.json",
    log:
        "logs/{data}/sensitivity_ratios/{model}/{ratios}.log",
    benchmark:
        "benchmarks/{data}/sensitivity_ratios/{model}/{ratios}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        code=code_version("sensitivity_ratios"),
        ratios=jobs.ratio_settings,
        batch_size=plan.sns["batch_size"],
    message:
        "sensitivity ratios: {wildcards.model}"
    script:
        "../workflow_scripts/sensitivity_ratios.py"


rule ratio_report:
    input:
        unpack(jobs.arch_ratio_files),
        tops=jobs.arch_top_list,
    output:
        table="results/{data}/sns/{arch}/{attack}-{form}/{ratios}_table_ii.csv",
        md="results/{data}/sns/{arch}/{attack}-{form}/{ratios}_table_ii.md",
        html=report(
            "results/{data}/sns/{arch}/{attack}-{form}/{ratios}_table_ii.html",
            caption="../report/ratio_fig13.rst",
            category="Sensitive neurons",
        ),
        means="results/{data}/sns/{arch}/{attack}-{form}/{ratios}_layer_means.csv",
        fig13=report(
            "results/{data}/sns/{arch}/{attack}-{form}/{ratios}_fig13.png",
            caption="../report/ratio_fig13.rst",
            category="Sensitive neurons",
            subcategory="Sensitivity ratios",
            labels={"architecture": "{arch}", "figure": "per layer (Fig 13)"},
        ),
        fig13_pdf="results/{data}/sns/{arch}/{attack}-{form}/{ratios}_fig13.pdf",
        fig14=report(
            "results/{data}/sns/{arch}/{attack}-{form}/{ratios}_fig14.png",
            caption="../report/ratio_fig14.rst",
            category="Sensitive neurons",
            subcategory="Sensitivity ratios",
            labels={"architecture": "{arch}", "figure": "vs strength (Fig 14)"},
        ),
        fig14_pdf="results/{data}/sns/{arch}/{attack}-{form}/{ratios}_fig14.pdf",
        meta="results/{data}/sns/{arch}/{attack}-{form}/{ratios}_report.json",
    log:
        "logs/{data}/ratio_report/{arch}/{attack}-{form}/{ratios}.log",
    benchmark:
        "benchmarks/{data}/ratio_report/{arch}/{attack}-{form}/{ratios}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("ratio_report"),
        labels=jobs.arch_ratio_labels,
        table_family=plan.sns["ratios"]["table_family"],
        title="{arch}",
    message:
        "sensitivity ratio report: {wildcards.arch}"
    script:
        "../workflow_scripts/ratio_report.py"


rule sensitivity_curves:
    input:
        unpack(jobs.arch_sensitivity_files),
    output:
        png=report(
            "results/{data}/sns/{arch}/{attack}/sensitivity_curves_{form}.png",
            caption="../report/sensitivity_curves.rst",
            category="Sensitive neurons",
            subcategory="Sensitivity per channel",
            labels={"architecture": "{arch}"},
        ),
        pdf="results/{data}/sns/{arch}/{attack}/sensitivity_curves_{form}.pdf",
        summary="results/{data}/sns/{arch}/{attack}/sensitivity_curves_{form}_summary.csv",
        md="results/{data}/sns/{arch}/{attack}/sensitivity_curves_{form}_summary.md",
        html=report(
            "results/{data}/sns/{arch}/{attack}/sensitivity_curves_{form}_summary.html",
            caption="../report/sensitivity_curves.rst",
            category="Sensitive neurons",
        ),
        meta="results/{data}/sns/{arch}/{attack}/sensitivity_curves_{form}.json",
    log:
        "logs/{data}/sensitivity_curves/{arch}/{attack}_{form}.log",
    benchmark:
        "benchmarks/{data}/sensitivity_curves/{arch}/{attack}_{form}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("sensitivity_curves"),
        top_percent=plan.sns["layer_top_percent"],
        title="{arch}",
    message:
        "sensitivity curves: {wildcards.arch}"
    script:
        "../workflow_scripts/sensitivity_curves.py"


rule findings:
    input:
        jobs.findings_files,
    output:
        md=plan.run_file("findings.md"),
        html=report(
            plan.run_file("findings.html"),
            caption="../report/findings.rst",
            category="Findings",
        ),
        json=plan.run_file("findings.json"),
    log:
        plan.run_log("findings"),
    benchmark:
        plan.run_log("findings", "tsv")
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("findings"),
        inputs=jobs.findings_inputs,
        dataset=plan.dataset,
    message:
        "paper claims (findings.md)"
    script:
        "../workflow_scripts/findings.py"
