"""Rule layer_similarity: similarity of per-target sensitive neurons per layer (advneurons.sns.similarity.layer_similarity)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.sns.similarity import layer_similarity
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
layer_similarity(
    sensitivity_csv=smk.input.sensitivity[0],
    top_percent=float(smk.wildcards.percent),
    out_csv=smk.output.csv,
    out_md=smk.output.md,
    figure_png=smk.output.png,
    meta_path=smk.output.meta,
    title=smk.params.title,
)
runtime.end_step()
