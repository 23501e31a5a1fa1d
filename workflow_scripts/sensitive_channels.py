"""Rule sensitive_channels: top-k% sensitive channels per layer (advneurons.evaluation.sensitivity.top_channels_file)."""

from advneurons import runtime
from advneurons.evaluation.sensitivity import top_channels_file

if "snakemake" not in globals():  # by hand: python workflow_scripts/<step>.py <output file> [--configfile ...]
    from advneurons.workflow.standalone import mock_snakemake

    snakemake = mock_snakemake(__file__)
smk = snakemake
runtime.configure_logging(smk.log[0])
top_channels_file(smk.input[0], float(smk.wildcards.percent), smk.output[0])
