"""Rule psn_scores: verified-bound PSN score of every unit of every scored layer (advneurons.psn.scores.psn_scores)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.psn.scores import psn_scores
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
s = smk.params.scoring
runtime.setup(smk.threads, s["seed"])
psn_scores(
    model_path=smk.input.model,
    images_path=smk.input.test,
    n_images=s["n_images"],
    eps=s["eps"],
    bound_method=s["bound_method"],
    mem_budget_mb=s["mem_budget_mb"],
    seed=s["seed"],
    out_path=smk.output.scores,
    meta_path=smk.output.meta,
    variant=s["variant"],
    zscore=s["zscore"],
    nodes=s["nodes"],
    last_nodes=s["last_nodes"],
)
runtime.end_step()
