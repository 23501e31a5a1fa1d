"""Rule findings: results/findings.md, each paper claim and whether this run supports it (advneurons.sns.findings)."""

from advneurons import runtime
from advneurons.sns.findings import sns_findings

if "snakemake" not in globals():  # by hand: python workflow_scripts/<step>.py <output file> [--configfile ...]
    from advneurons.workflow.standalone import mock_snakemake

    snakemake = mock_snakemake(__file__)
smk = snakemake
runtime.configure_logging(smk.log[0])
sns_findings(
    out_md=smk.output.md,
    out_json=smk.output.json,
    title=f"Findings on {smk.params.dataset}",
    **smk.params.inputs,
)
