"""Rule ratio_report: TIP Table II, Fig 13 and Fig 14 for one architecture (advneurons.sns.ratios.ratio_report)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.sns.ratios import ratio_report
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
labels = smk.params.labels
ratio_report(
    ratio_csvs={label: smk.input[label] for label in labels},
    table_family=smk.params.table_family,
    out_table_csv=smk.output.table,
    out_table_md=smk.output.md,
    layer_means_csv=smk.output.means,
    fig13_png=smk.output.fig13,
    fig14_png=smk.output.fig14,
    meta_path=smk.output.meta,
    top_csvs=dict(zip(labels, smk.input.tops, strict=True)),
    title=smk.params.title,
)
runtime.end_step()
