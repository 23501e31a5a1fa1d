"""Rule sensitive_channels: top-k% sensitive channels per layer (advneurons.evaluation.sensitivity.top_channels_file)."""

from advneurons import runtime
from advneurons.evaluation.sensitivity import top_channels_file
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
top_channels_file(smk.input[0], float(smk.wildcards.percent), smk.output[0])
