"""Rule layer_similarity: similarity of per-target sensitive neurons per layer (advneurons.sns.findings)."""

from advneurons import runtime
from advneurons.sns.similarity import layer_similarity_report

if "snakemake" not in globals():  # by hand: python workflow_scripts/<step>.py <output file> [--configfile ...]
    from advneurons.workflow.standalone import mock_snakemake

    snakemake = mock_snakemake(__file__)
smk = snakemake
runtime.configure_logging(smk.log[0])
layer_similarity_report(
    sensitivity_csv=smk.input.sensitivity[0],
    top_percent=float(smk.wildcards.percent),
    out_csv=smk.output.csv,
    out_md=smk.output.md,
    figure_png=smk.output.png,
    meta_path=smk.output.meta,
    title=smk.params.title,
)
