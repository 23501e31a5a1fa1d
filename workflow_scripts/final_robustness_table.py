"""Rule final_robustness_table: every model and defense x the attack suite (advneurons.defenses.tables.final_robustness_table)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.defenses.tables import final_robustness_table
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
final_robustness_table(
    record_csvs=list(smk.input.records),
    columns=smk.params.columns,
    dataset=smk.params.dataset,
    models=smk.params.models,
    out_csv=smk.output.csv,
    out_md=smk.output.md,
    out_tex=smk.output.tex,
    settings_csv=smk.output.settings,
)
runtime.end_step()
