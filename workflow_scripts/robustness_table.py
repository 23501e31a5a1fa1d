"""Rule robustness_table: accuracy of every model under every evaluation attack (advneurons.evaluation)."""

from advneurons import runtime
from advneurons.evaluation import TableEntry, robustness_table

smk = snakemake  # noqa: F821 -- injected by Snakemake
runtime.configure_logging(smk.log[0])
entries = [TableEntry(pairs_path=path, **entry) for path, entry in zip(smk.input.pairs, smk.params.entries, strict=True)]
robustness_table(entries, smk.output.csv, smk.output.md, smk.params.dataset)
