"""Rule sns_layer_range: SNS by fine-tuned layer range, table and figure (advneurons.sns.layer_range)."""

from advneurons import runtime
from advneurons.sns.layer_range import sns_layer_range

if "snakemake" not in globals():  # by hand: python workflow_scripts/<step>.py <output file> [--configfile ...]
    from advneurons.workflow.standalone import mock_snakemake

    snakemake = mock_snakemake(__file__)
smk = snakemake
runtime.configure_logging(smk.log[0])
sns_layer_range(
    record_csvs=list(smk.input.records),
    models=smk.params.models,
    attacks=smk.params.attacks,
    training=smk.params.training,
    out_csv=smk.output.csv,
    out_md=smk.output.md,
    out_png=smk.output.png,
)
