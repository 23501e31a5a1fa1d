"""Rule meansparse_model: MeanSparse statistics, alpha sweep on validation data, defended checkpoint
(advneurons.defenses.meansparse.meansparse_model)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.defenses.meansparse import meansparse_model
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
m = smk.params.meansparse
runtime.setup(smk.threads, m["seed"])
meansparse_model(
    model_path=smk.input.model,
    train_path=smk.input.train,
    val_path=smk.input.val,
    alphas=m["alphas"],
    attacks=m["attacks"],
    select_on=m["select_on"],
    max_clean_drop=m["max_clean_drop"],
    n_val=m["n_val"],
    seed=m["seed"],
    out_model=smk.output.model,
    sweep_csv=smk.output.sweep,
    sweep_md=smk.output.md,
    meta_path=smk.output.meta,
    batch_size=smk.params.batch_size,
)
runtime.end_step()
