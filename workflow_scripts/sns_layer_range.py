"""Rule sns_layer_range: SNS by fine-tuned layer range, table and figure (advneurons.sns.layer_range.sns_layer_range)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.sns.layer_range import sns_layer_range
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
sns_layer_range(
    record_csvs=list(smk.input.records),
    models=smk.params.models,
    attacks=smk.params.attacks,
    training=smk.params.training,
    out_csv=smk.output.csv,
    out_md=smk.output.md,
    out_png=smk.output.png,
)
runtime.end_step()
