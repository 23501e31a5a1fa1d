"""Rule targeted_pairs: targeted L-inf PGD towards every class (advneurons.sns.importance.targeted_pairs)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.sns.importance import targeted_pairs
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
t = smk.params.targeted
runtime.setup(smk.threads, t["seed"])
targeted_pairs(
    model_path=smk.input.model,
    test_path=smk.input.test,
    attack_cfg=t["attack"],
    n_per_class=t["n_per_class"],
    seed=t["seed"],
    batch_size=smk.params.batch_size,
    out_path=smk.output.pairs,
    meta_path=smk.output.meta,
)
runtime.end_step()
