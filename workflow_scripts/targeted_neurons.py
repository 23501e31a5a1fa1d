"""Rule targeted_neurons: per-target sensitivity and importance votes (advneurons.sns.importance.targeted_neurons)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.sns.importance import targeted_neurons
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
runtime.setup(smk.threads)
targeted_neurons(
    model_path=smk.input.model,
    targeted_pairs_path=smk.input.pairs,
    k=int(smk.wildcards.k),
    batch_size=smk.params.batch_size,
    sensitivity_csv=smk.output.sensitivity,
    importance_csv=smk.output.importance,
    meta_path=smk.output.meta,
    site=smk.params.site,
)
runtime.end_step()
