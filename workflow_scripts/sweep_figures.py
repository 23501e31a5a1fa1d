"""Rule sweep_figures: accuracy vs steps and vs eps for all models (advneurons.evaluation.robustness.sweep_figures)."""

from advneurons import runtime
from advneurons.evaluation.robustness import sweep_figures

if "snakemake" not in globals():  # by hand: python workflow_scripts/<step>.py <output file> [--configfile ...]
    from advneurons.workflow.standalone import mock_snakemake

    snakemake = mock_snakemake(__file__)
smk = snakemake
runtime.configure_logging(smk.log[0])
sweep_figures(list(smk.input.sweeps), smk.output.csv, smk.output.steps_png, smk.output.eps_png)
