"""Rule suppression_study: sensitive vs random channels scaled by beta (advneurons.sns.suppression.suppression_study)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.sns.suppression import suppression_study
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
s = smk.params.suppression
runtime.setup(smk.threads, s["seed"])
suppression_study(
    model_path=smk.input.model,
    test_path=smk.input.test,
    sensitivity_csv=smk.input.sensitivity,
    perturbations=s["perturbations"],
    out_csv=smk.output.csv,
    summary_csv=smk.output.summary,
    out_md=smk.output.md,
    figure_png=smk.output.png,
    meta_path=smk.output.meta,
    betas=s["betas"],
    top_percent=s["top_percent"],
    n_random=s["n_random"],
    n_images=s["n_images"],
    seed=s["seed"],
    batch_size=smk.params.batch_size,
    title=smk.params.title,
)
runtime.end_step()
