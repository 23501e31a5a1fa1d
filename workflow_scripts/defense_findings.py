"""Rule defense_findings: the defense claims for results/findings.md (advneurons.defense_tables)."""

from advneurons import runtime
from advneurons.defense_tables import defense_findings

smk = snakemake  # noqa: F821 -- injected by Snakemake
runtime.configure_logging(smk.log[0])
defense_findings(
    final_csv=smk.input.final,
    sensitivity_csvs=dict(zip(smk.params.archs, smk.input.sensitivity)),
    out_json=smk.output[0],
    transfer_csv=smk.input.get("transfer"),
)
