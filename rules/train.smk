# Stage 2: model training (vanilla, PAT, ALP, NAT, EAT with static source models; SNS fine-tunes a trained base model). Resumes from the last finished epoch if a job was killed.


rule train_model:
    input:
        unpack(jobs.training_inputs),
    output:
        model="results/{data}/models/{model}/model.pt",
        metrics="results/{data}/models/{model}/metrics.csv",
        meta="results/{data}/models/{model}/metadata.json",
    log:
        "logs/{data}/train_model/{model}.log",
    benchmark:
        "benchmarks/{data}/train_model/{model}.tsv"
    # models first: everything else waits on them (profiles/default/config.yaml says why not `prioritize`)
    priority: 10
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        code=code_version("train_model"),
        model=jobs.model_settings,
        dataset=plan.dataset,
    message:
        "train {wildcards.model}"
    script:
        "../workflow_scripts/train_model.py"
