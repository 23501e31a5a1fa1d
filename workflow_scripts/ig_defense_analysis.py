"""Rule ig_defense_analysis: relative activation change of the four channel groups of an IG-Defense mask
under attacks on the undefended model (advneurons.defenses.ig_defense.ig_defense_analysis)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.defenses.ig_defense import ig_defense_analysis
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
a = smk.params.analysis
runtime.setup(smk.threads, a["seed"])
ig_defense_analysis(
    model_path=smk.input.model,
    test_path=smk.input.test,
    attack=a["attack"],
    n_images=a["n_images"],
    seed=a["seed"],
    per_image_csv=smk.output.per_image,
    summary_csv=smk.output.summary,
    summary_md=smk.output.md,
    figure_png=smk.output.png,
    meta_path=smk.output.meta,
    model_name=smk.params.model_name,
    batch_size=smk.params.batch_size,
)
runtime.end_step()
