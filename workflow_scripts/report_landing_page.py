"""Rule report_landing_page: the first page of the HTML report (advneurons.report.landing_page.report_landing_page)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.report.landing_page import report_landing_page
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
report_landing_page(
    smk.output[0],
    dataset=smk.params.dataset,
    seed=smk.params.seed,
    data_id=smk.params.data_id,
    models=smk.params.models,
    defenses=smk.params.defenses,
    robustness_csv=smk.input.get("robustness"),
    final_csv=smk.input.get("final"),
    findings_json=smk.input.get("findings"),
    links=smk.params.links,
)
runtime.end_step()
