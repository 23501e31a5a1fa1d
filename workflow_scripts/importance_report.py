"""Rule importance_report: Spearman / Levenshtein / Jaccard per target class (advneurons.sns.similarity.importance_report)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.sns.similarity import importance_report
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
importance_report(
    sensitivity_csv=smk.input.sensitivity,
    importance_csv=smk.input.importance,
    k=int(smk.wildcards.k),
    out_csv=smk.output.csv,
    out_md=smk.output.md,
    summary_csv=smk.output.summary,
    figure_png=smk.output.png,
    meta_path=smk.output.meta,
    title=smk.params.title,
)
runtime.end_step()
