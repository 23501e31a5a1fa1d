"""Rule psn_top_units: the top-p% PSN units of each layer, for every p (advneurons.psn.scores.psn_top_units)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.psn.scores import psn_top_units
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
psn_top_units(scores_path=smk.input[0], percents=smk.params.percents, out_path=smk.output[0])
runtime.end_step()
