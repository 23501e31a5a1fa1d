"""Rule sensitive_channels: top-k% sensitive channels per layer (advneurons.evaluation.sensitivity.sensitive_channels)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.evaluation.sensitivity import sensitive_channels
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
sensitive_channels(smk.input[0], float(smk.wildcards.percent), smk.output[0])
runtime.end_step()
