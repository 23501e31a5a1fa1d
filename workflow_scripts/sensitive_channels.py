"""Rule sensitive_channels: top-k% sensitive channels per layer (advneurons.evaluation.sensitivity.top_channels_file)."""

from advneurons import runtime
from advneurons.evaluation.sensitivity import top_channels_file

smk = snakemake  # noqa: F821 -- injected by Snakemake
runtime.configure_logging(smk.log[0])
top_channels_file(smk.input[0], float(smk.wildcards.percent), smk.output[0])
