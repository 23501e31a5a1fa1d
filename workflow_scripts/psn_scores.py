"""Rule psn_scores: verified-bound PSN score of every unit of every scored layer (advneurons.psn.scores)."""

from advneurons import runtime
from advneurons.psn.scores import psn_scores

if "snakemake" not in globals():  # by hand: python workflow_scripts/<step>.py <output file> [--configfile ...]
    from advneurons.workflow.standalone import mock_snakemake

    snakemake = mock_snakemake(__file__)
smk = snakemake
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
)
