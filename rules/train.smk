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
    # not an external model's id (import_model makes those): Snakemake would otherwise try this rule's input
    # function on them too and print its failure as an error
    wildcard_constraints:
        model=r"(?![a-z0-9]+-external~)[a-z0-9]+-[a-z0-9_]+~[0-9a-f]{8}",
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


# External models (config external_models) enter the DAG here, at the path of a trained model's checkpoint, so
# every stage that reads a checkpoint reads them alike; their ids end in "-external~<hash>", which no training has.
ruleorder: import_model > train_model


rule import_model:
    input:
        weights=jobs.external_weights,
    output:
        model="results/{data}/models/{model}/model.pt",
        meta="results/{data}/models/{model}/metadata.json",
    log:
        "logs/{data}/import_model/{model}.log",
    benchmark:
        "benchmarks/{data}/import_model/{model}.tsv"
    wildcard_constraints:
        model=r"[a-z0-9]+-external~[0-9a-f]{8}",
    priority: 10
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        code=code_version("import_model"),
        external=jobs.external_settings,
        dataset=plan.dataset,
    message:
        "import external model {wildcards.model}"
    script:
        "../workflow_scripts/import_model.py"
