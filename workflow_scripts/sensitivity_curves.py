"""Rule sensitivity_curves: sorted per-channel sensitivity per training, TIP Fig 10 (advneurons.sns.ratios.sensitivity_curves)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.sns.ratios import sensitivity_curves
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
sensitivity_curves(
    sensitivity_csvs=dict(smk.input.items()),
    out_png=smk.output.png,
    summary_csv=smk.output.summary,
    summary_md=smk.output.md,
    meta_path=smk.output.meta,
    top_percent=smk.params.top_percent,
    title=smk.params.title,
)
runtime.end_step()
