"""Rule results_long: every accuracy of the run in one long table (advneurons.evaluation.long_table.results_long)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.evaluation.long_table import results_long
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
results_long(record_csvs=list(smk.input.records), models=smk.params.models, out_csv=smk.output.csv)
runtime.end_step()
