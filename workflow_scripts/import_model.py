"""Rule import_model: an external model (factory or RobustBench entry) as a pipeline checkpoint
(advneurons.models.external.import_model)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.models.external import import_model
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
runtime.setup(smk.threads, 0)
e = smk.params.external
import_model(e["name"], e["entry"], smk.params.dataset, 10, smk.output.model, smk.output.meta)
runtime.end_step()
