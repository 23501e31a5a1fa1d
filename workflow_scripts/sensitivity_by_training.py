"""Rule sensitivity_by_training: per-layer neuron sensitivity of every model of one architecture (TIP Fig 17)."""

from advneurons import runtime
from advneurons.defenses.tables import sensitivity_by_training

if "snakemake" not in globals():  # by hand: python workflow_scripts/<step>.py <output file> [--configfile ...]
    from advneurons.workflow.standalone import mock_snakemake

    snakemake = mock_snakemake(__file__)
smk = snakemake
runtime.configure_logging(smk.log[0])
sensitivity_by_training(
    sensitivity_csvs=dict(smk.input.items()),
    arch=smk.wildcards.arch,
    out_csv=smk.output.csv,
    out_png=smk.output.png,
)
