"""Rule meansparse_model: MeanSparse statistics, alpha sweep on validation data, defended checkpoint
(advneurons.defenses.meansparse)."""

from advneurons import runtime
from advneurons.defenses.meansparse import meansparse_model

if "snakemake" not in globals():  # by hand: python workflow_scripts/<step>.py <output file> [--configfile ...]
    from advneurons.workflow.standalone import mock_snakemake

    snakemake = mock_snakemake(__file__)
smk = snakemake
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
