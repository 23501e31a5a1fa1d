"""Rule findings: results/runs/<run>/findings.md, each paper claim and whether this run supports it (advneurons.sns.findings.sns_findings)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.sns.findings import sns_findings
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
sns_findings(
    out_md=smk.output.md,
    out_json=smk.output.json,
    title=f"Findings on {smk.params.dataset}",
    **smk.params.inputs,
)
runtime.end_step()
