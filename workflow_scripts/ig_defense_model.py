"""Rule ig_defense_model: LO-IR ranking, class-wise mask and the IG-Defense checkpoint
(advneurons.defenses.ig_defense.ig_defense_model)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.defenses.ig_defense import ig_defense_model
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
s = smk.params.ig_defense
runtime.setup(smk.threads, s["seed"])
ig_defense_model(
    model_path=smk.input.model,
    train_path=smk.input.train,
    val_path=smk.input.val,
    top_percent=s["top_percent"],
    noise_std_255=s["noise_std"],
    temperature=s["temperature"],
    eot_samples=s["eot_samples"],
    n_train=s["n_train"],
    seed=s["seed"],
    out_model=smk.output.model,
    ranking_csv=smk.output.ranking,
    meta_path=smk.output.meta,
    batch_size=smk.params.batch_size,
)
runtime.end_step()
