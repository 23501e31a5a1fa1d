"""Rules robustness_table / robustness_table_i: the TIP Table III / I layouts (advneurons.evaluation.robustness)."""

from advneurons import runtime
from advneurons.evaluation.robustness import robustness_tables

if "snakemake" not in globals():  # by hand: python workflow_scripts/<step>.py <output file> [--configfile ...]
    from advneurons.workflow.standalone import mock_snakemake

    snakemake = mock_snakemake(__file__)
smk = snakemake
runtime.configure_logging(smk.log[0])
robustness_tables(
    record_csvs=list(smk.input.records),
    layout=smk.params.layout,
    dataset=smk.params.dataset,
    out_csv=smk.output.csv,
    out_md=smk.output.md,
    settings_csv=smk.output.settings,
    settings_md=smk.output.settings_md,
    columns=smk.params.columns,
)
