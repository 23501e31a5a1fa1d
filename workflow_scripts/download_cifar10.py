"""Rule download_cifar10: fetch and verify the CIFAR-10 archive (advneurons.data.fetch_cifar10_archive)."""

from pathlib import Path

from advneurons import runtime
from advneurons.data import fetch_cifar10_archive

smk = snakemake  # noqa: F821 -- injected by Snakemake
runtime.configure_logging(smk.log[0])
archive = Path(smk.output[0])
fetch_cifar10_archive(archive.parent, url=smk.params.url, md5=smk.params.md5)
