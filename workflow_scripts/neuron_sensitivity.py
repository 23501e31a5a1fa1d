"""Rule neuron_sensitivity: per-channel sensitivity of every layer (advneurons.evaluation.sensitivity)."""

from advneurons import runtime
from advneurons.evaluation.sensitivity import sensitivity_from_pairs
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
runtime.setup(smk.threads)
sensitivity_from_pairs(
    model_path=smk.input.model,
    pairs_path=smk.input.pairs,
    normalise=smk.params.normalise,
    batch_size=smk.params.batch_size,
    out_csv=smk.output.table,
    meta_path=smk.output.meta,
    site=smk.params.site,
)
