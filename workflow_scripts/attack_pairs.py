"""Rule attack_pairs: attack the test split and store the pair set (advneurons.evaluation.pairs.attack_pairs)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.evaluation.pairs import attack_pairs
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
a = smk.params.attack
runtime.setup(smk.threads, a["seed"])
attack_pairs(
    model_path=smk.input.model,
    test_path=smk.input.test,
    attack_cfg=a["attack"],
    n_images=a["n_images"],
    seed=a["seed"],
    batch_size=smk.params.batch_size,
    out_path=smk.output.pairs,
    meta_path=smk.output.meta,
)
runtime.end_step()
