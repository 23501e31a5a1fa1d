# Stage 1: datasets as uint8 train/val/test split files.


# The output is a record of the verified archive, not the archive: Snakemake deletes a rule's outputs before
# re-running it (a changed url, a code change), and a hand-placed archive must never be deleted or re-fetched.
rule download_cifar10:
    output:
        plan.cifar10_archive_record,
    log:
        "logs/download_cifar10.log",
    benchmark:
        "benchmarks/download_cifar10.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        code=code_version("download_cifar10"),
        url=config["dataset"]["cifar10"]["url"],
        md5=config["dataset"]["cifar10"]["md5"],
        batch_md5=config["dataset"]["cifar10"].get("batch_md5"),
    message:
        "download and verify the CIFAR-10 archive"
    script:
        "../workflow_scripts/download_cifar10.py"


rule prepare_dataset:
    input:
        unpack(dataset_inputs),
    output:
        train=split_file("train"),
        val=split_file("val"),
        test=split_file("test"),
        meta="results/{data}/data/metadata.json",
    log:
        "logs/{data}/prepare_dataset.log",
    benchmark:
        "benchmarks/{data}/prepare_dataset.tsv"
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        code=code_version("prepare_dataset"),
        dataset=jobs.dataset_settings,
    message:
        "dataset splits: {wildcards.data}"
    script:
        "../workflow_scripts/prepare_dataset.py"
