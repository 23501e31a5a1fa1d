"""Rule sweep_figures: accuracy vs steps and vs eps for all models (advneurons.evaluation.robustness.sweep_figures)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.evaluation.robustness import sweep_figures
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
sweep_figures(list(smk.input.sweeps), smk.output.csv, smk.output.steps_png, smk.output.eps_png)
runtime.end_step()
