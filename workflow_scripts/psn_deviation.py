"""Rule psn_deviation: activation deviation of PSN vs random units (advneurons.psn.analysis.psn_deviation)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.psn.analysis import psn_deviation
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
d = smk.params.deviation
runtime.setup(smk.threads, d["seed"])
psn_deviation(
    model_path=smk.input.model,
    test_path=smk.input.test,
    units_path=smk.input.scores,
    percent=d["percent"],
    n_images=d["n_images"],
    seed=d["seed"],
    out_layer_csv=smk.output.layers,
    out_block_csv=smk.output.blocks,
    out_png=smk.output.png,
    meta_path=smk.output.meta,
    noise_eps=d["noise_eps"],
    pgd_eps=d["pgd_eps"],
    pgd_step=d["pgd_step"],
    pgd_steps=d["pgd_steps"],
    batch_size=smk.params.batch_size,
)
runtime.end_step()
