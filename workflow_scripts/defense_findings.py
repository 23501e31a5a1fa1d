"""Rule defense_findings: the defense claims for results/runs/<run>/findings.md (advneurons.defenses.tables.defense_findings)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.defenses.tables import defense_findings
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
defense_findings(
    final_csv=smk.input.final,
    settings_csv=smk.input.settings,
    record_csvs=list(smk.input.records),
    sensitivity_csvs=dict(zip(smk.params.archs, smk.input.sensitivity)),
    trainings=smk.params.trainings,
    out_json=smk.output[0],
    transfer_csv=smk.input.get("transfer"),
)
runtime.end_step()
