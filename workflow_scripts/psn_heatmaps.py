"""Rule psn_heatmaps: single-unit Grad-CAM of a layer's extreme PSN units (advneurons.psn.analysis.psn_heatmaps)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.psn.analysis import psn_heatmaps
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
h = smk.params.heatmaps
runtime.setup(smk.threads, h["seed"])
psn_heatmaps(
    model_path=smk.input.model,
    test_path=smk.input.test,
    scores_path=smk.input.scores,
    layers=[smk.wildcards.layer],
    out_pngs=[smk.output.png],
    meta_path=smk.output.meta,
    n_units=h["n_units"],
    n_top=h["n_top"],
    n_images=h["n_images"],
    seed=h["seed"],
    pgd_eps=h["pgd_eps"],
    pgd_step=h["pgd_step"],
    pgd_steps=h["pgd_steps"],
)
runtime.end_step()
