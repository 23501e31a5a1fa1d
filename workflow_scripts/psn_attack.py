"""Rule psn_attack: Gaussian noise on PSN vs random units' activations (advneurons.psn.analysis.psn_attack)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.psn.analysis import psn_attack
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
a = smk.params.attack
runtime.setup(smk.threads, a["seed"])
psn_attack(
    model_path=smk.input.model,
    test_path=smk.input.test,
    scores_path=smk.input.scores,
    n_images=a["n_images"],
    seed=a["seed"],
    out_csv=smk.output.csv,
    out_md=smk.output.md,
    out_png=smk.output.png,
    meta_path=smk.output.meta,
    ratios=a["ratios"],
    sigma=a["sigma"],
    batch_size=smk.params.batch_size,
)
runtime.end_step()
