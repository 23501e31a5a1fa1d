"""Rule transfer_table: every transfer-check row in one table (advneurons.evaluation.transfer.transfer_table)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.evaluation.transfer import transfer_table
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
transfer_table(
    row_csvs=list(smk.input.rows),
    labels=dict(smk.params.labels),
    out_csv=smk.output.csv,
    out_md=smk.output.md,
)
runtime.end_step()
