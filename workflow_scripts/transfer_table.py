"""Rule transfer_table: every transfer-check row in one table (advneurons.evaluation.transfer.transfer_table)."""

from advneurons import runtime
from advneurons.evaluation.transfer import transfer_table

if "snakemake" not in globals():  # by hand: python workflow_scripts/<step>.py <output file> [--configfile ...]
    from advneurons.workflow.standalone import mock_snakemake

    snakemake = mock_snakemake(__file__)
smk = snakemake
runtime.configure_logging(smk.log[0])
transfer_table(
    row_csvs=list(smk.input.rows),
    labels=dict(smk.params.labels),
    out_csv=smk.output.csv,
    out_md=smk.output.md,
)
