"""Rule sensitivity_ratios: per-channel sensitivity ratios of conv and ReLU outputs (advneurons.sns.ratios.sensitivity_ratios)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.sns.ratios import sensitivity_ratios
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
r = smk.params.ratios
runtime.setup(smk.threads, r["seed"])
sensitivity_ratios(
    model_path=smk.input.model,
    test_path=smk.input.test,
    perturbations=r["perturbations"],
    out_csv=smk.output.csv,
    meta_path=smk.output.meta,
    n_images=r["n_images"],
    seed=r["seed"],
    batch_size=smk.params.batch_size,
)
runtime.end_step()
