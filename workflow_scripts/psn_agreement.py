"""Rule psn_agreement: PSN ranking vs neuron-sensitivity ranking per layer (advneurons.psn.analysis)."""

from advneurons import runtime
from advneurons.psn.analysis import method_agreement

if "snakemake" not in globals():  # by hand: python workflow_scripts/<step>.py <output file> [--configfile ...]
    from advneurons.workflow.standalone import mock_snakemake

    snakemake = mock_snakemake(__file__)
smk = snakemake
runtime.configure_logging(smk.log[0])
method_agreement(
    scores_path=smk.input.scores,
    sensitivity_csv=smk.input.sensitivity,
    k_percent=float(smk.wildcards.percent),
    out_csv=smk.output.csv,
    out_md=smk.output.md,
    out_png=smk.output.png,
)
