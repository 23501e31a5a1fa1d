# Neuron-level adversarial vulnerability: data -> models -> adversarial pairs -> neuron sensitivity
# -> robustness tables, SNS analyses, propagation-sensitive neurons (PSN). All logic lives in the `advneurons` package (src/); rules are wiring.


# config.yaml is the default run (digits). A config file named on the command line replaces it whole, so a
# preset runs exactly what it states and no digits value leaks into it; several command-line files still
# merge in order (`--configfile config.yaml mine.yaml` adds your changes to the default run).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/attack.smk"
include: "rules/sensitivity.smk"
include: "rules/evaluate.smk"
include: "rules/sns.smk"
include: "rules/psn.smk"
include: "rules/defenses.smk"
include: "rules/report.smk"


# The report opens on this run's landing page once the run has written it, else on the generic description.
REPORT_FIRST_PAGE = (
    os.path.abspath(plan.landing_page)
    if os.path.exists(plan.landing_page)
    else "report/workflow.rst"
)


report: REPORT_FIRST_PAGE


rule all:
    default_target: True
    input:
        targets.final_outputs(plan),
    localrule: True
    message:
        "every result of the run is in place"


# A local run's jobs fork from one warm interpreter that has torch and the package loaded (about 2.7 s of CPU per
# job otherwise); SLURM jobs, and every job with ADVNEURONS_STEP_SERVER=off, run in their own (step_server.py).
onstart:
    start_step_server()


onsuccess:
    stop_step_server()
    print(targets.results_guide(plan))


onerror:
    stop_step_server()
