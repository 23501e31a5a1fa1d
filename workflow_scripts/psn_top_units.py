"""Rule psn_top_units: the top-p% PSN units of each layer, for every p (advneurons.psn.scores)."""

from advneurons import runtime
from advneurons.psn.scores import top_units

if "snakemake" not in globals():  # by hand: python workflow_scripts/<step>.py <output file> [--configfile ...]
    from advneurons.workflow.standalone import mock_snakemake

    snakemake = mock_snakemake(__file__)
smk = snakemake
runtime.configure_logging(smk.log[0])
top_units(scores_path=smk.input[0], percents=smk.params.percents, out_path=smk.output[0])
