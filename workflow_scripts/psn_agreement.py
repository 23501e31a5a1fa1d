"""Rule psn_agreement: PSN ranking vs neuron-sensitivity ranking per layer (advneurons.psn.analysis.psn_agreement)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.psn.analysis import psn_agreement
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
psn_agreement(
    scores_path=smk.input.scores,
    sensitivity_csv=smk.input.sensitivity,
    k_percent=float(smk.wildcards.percent),
    out_csv=smk.output.csv,
    out_md=smk.output.md,
    out_png=smk.output.png,
)
runtime.end_step()
