"""Rule transfer_check: a defended model fed its base model's adversarial examples, beside both white-box
cells (advneurons.evaluation.transfer.transfer_check)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.evaluation.transfer import transfer_check
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
c = smk.params.check
runtime.setup(smk.threads, c["seed"])  # a randomised defense draws its noise from the seeded generator
transfer_check(
    model_path=smk.input.model,
    pairs_path=smk.input.pairs,
    whitebox_csv=smk.input.whitebox,
    base_whitebox_csv=smk.input.base_whitebox,
    attack=c["attack"],
    model_name=smk.params.model_name,
    base_name=c["base_name"],
    seed=c["seed"],
    batch_size=smk.params.batch_size,
    out_csv=smk.output.csv,
    meta_path=smk.output.meta,
)
runtime.end_step()
