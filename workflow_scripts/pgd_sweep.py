"""Rule pgd_sweep: L-inf PGD accuracy of one model over steps and eps (advneurons.evaluation.robustness.pgd_sweep)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.evaluation.robustness import pgd_sweep
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
s = smk.params.sweep
runtime.setup(smk.threads, s["seed"])
pgd_sweep(
    model_path=smk.input.model,
    test_path=smk.input.test,
    model_name=smk.params.model_name,
    eps=s["eps"],
    steps_values=s["steps_values"],
    eps_values=s["eps_values"],
    steps=s["steps"],
    n_images=s["n_images"],
    seed=s["seed"],
    batch_size=s["batch_size"],
    out_csv=smk.output.csv,
    meta_path=smk.output.meta,
)
runtime.end_step()
