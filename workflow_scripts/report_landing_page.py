"""Rule report_landing_page: the first page of the HTML report (advneurons.report.landing_page)."""

from advneurons import runtime
from advneurons.report.landing_page import write_landing_page

if "snakemake" not in globals():  # by hand: python workflow_scripts/<step>.py <output file> [--configfile ...]
    from advneurons.workflow.standalone import mock_snakemake

    snakemake = mock_snakemake(__file__)
smk = snakemake
runtime.configure_logging(smk.log[0])
write_landing_page(
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
