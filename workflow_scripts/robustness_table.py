"""Rules robustness_table / robustness_table_i: the TIP Table III / I layouts (advneurons.evaluation.robustness.robustness_table)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.evaluation.robustness import robustness_table
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
robustness_table(
    record_csvs=list(smk.input.records),
    layout=smk.params.layout,
    dataset=smk.params.dataset,
    out_csv=smk.output.csv,
    out_md=smk.output.md,
    settings_csv=smk.output.settings,
    settings_md=smk.output.settings_md,
    columns=smk.params.columns,
)
runtime.end_step()
