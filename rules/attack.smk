# Stage 3: adversarial pair sets (clean, perturbed, label, both predictions) on the test split.


rule attack_pairs:
    input:
        model=rules.train_model.output.model,
        test=rules.prepare_dataset.output.test,
    output:
        pairs="results/{data}/pairs/{model}/{attack}/pairs.npz",
        meta="results/{data}/pairs/{model}/{attack}/metadata.json",
    log:
        "logs/{data}/attack_pairs/{model}/{attack}.log",
    benchmark:
        "benchmarks/{data}/attack_pairs/{model}/{attack}.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        code=code_version("attack_pairs"),
        attack=jobs.attack_settings,
        batch_size=config["evaluation"]["batch_size"],
    message:
        "adversarial pairs: {wildcards.model} under {wildcards.attack}"
    script:
        "../workflow_scripts/attack_pairs.py"
