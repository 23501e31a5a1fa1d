"""Rule sensitivity_by_training: per-layer neuron sensitivity of every model of one architecture (TIP Fig 17)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.defenses.tables import sensitivity_by_training
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
sensitivity_by_training(
    sensitivity_csvs=dict(smk.input.items()),
    arch=smk.wildcards.arch,
    out_csv=smk.output.csv,
    out_png=smk.output.png,
)
runtime.end_step()
