# The report's landing page: what the run did and its headline numbers (snakemake --report report.html).


rule report_landing_page:
    input:
        unpack(jobs.landing_page_inputs),
    output:
        plan.landing_page,
    log:
        plan.run_log("report_landing_page"),
    benchmark:
        plan.run_log("report_landing_page", "tsv")
    localrule: True
    conda:
        "../envs/advneurons.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        code=code_version("report_landing_page"),
        dataset=plan.dataset,
        seed=config["seed"],
        data_id=plan.data_id,
        models=list(plan.analysed),
        defenses=list(plan.defense_models),
        links=jobs.landing_page_links,
    message:
        "report landing page"
    script:
        "../workflow_scripts/report_landing_page.py"
