"""Rule pgd_sweep: L-inf PGD accuracy of one model over steps and eps (advneurons.evaluation.robustness.robustness_sweep)."""

from advneurons import runtime
from advneurons.evaluation.robustness import robustness_sweep

if "snakemake" not in globals():  # by hand: python workflow_scripts/<step>.py <output file> [--configfile ...]
    from advneurons.workflow.standalone import mock_snakemake

    snakemake = mock_snakemake(__file__)
smk = snakemake
runtime.configure_logging(smk.log[0])
s = smk.params.sweep
runtime.setup(smk.threads, s["seed"])
robustness_sweep(
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
