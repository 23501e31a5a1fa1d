"""Rule neuron_sensitivity: per-channel sensitivity of every layer (advneurons.evaluation.sensitivity.neuron_sensitivity)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.evaluation.sensitivity import neuron_sensitivity
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
runtime.setup(smk.threads)
neuron_sensitivity(
    model_path=smk.input.model,
    pairs_path=smk.input.pairs,
    normalise=smk.params.normalise,
    batch_size=smk.params.batch_size,
    out_csv=smk.output.table,
    meta_path=smk.output.meta,
    site=smk.params.site,
)
runtime.end_step()
