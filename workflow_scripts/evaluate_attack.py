"""Rule evaluate_attack: accuracy of one model under one attack (advneurons.evaluation.robustness.evaluate_attack)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.evaluation.robustness import evaluate_attack
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
e = smk.params.evaluation
runtime.setup(smk.threads, e["seed"])
evaluate_attack(
    model_path=smk.input.model,
    test_path=smk.input.test,
    attacks={e["name"]: e["attack"]},
    model_name=smk.params.model_name,
    n_images=e["n_images"],
    seed=e["seed"],
    batch_size=smk.params.batch_size,
    out_csv=smk.output.records,
    meta_path=smk.output.meta,
    precision=e.get("precision", "fp32"),
    images_csv=smk.output.images,
    code=smk.params.code,
    log_path=smk.log[0],
)
runtime.end_step()
