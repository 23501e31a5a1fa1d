"""Rule importance_report: Spearman / Levenshtein / Jaccard per target class (advneurons.sns.findings)."""

from advneurons import runtime
from advneurons.sns.similarity import importance_sensitivity_report

if "snakemake" not in globals():  # by hand: python workflow_scripts/<step>.py <output file> [--configfile ...]
    from advneurons.workflow.standalone import mock_snakemake

    snakemake = mock_snakemake(__file__)
smk = snakemake
runtime.configure_logging(smk.log[0])
importance_sensitivity_report(
    sensitivity_csv=smk.input.sensitivity,
    importance_csv=smk.input.importance,
    k=int(smk.wildcards.k),
    out_csv=smk.output.csv,
    out_md=smk.output.md,
    summary_csv=smk.output.summary,
    figure_png=smk.output.png,
    meta_path=smk.output.meta,
    title=smk.params.title,
)
