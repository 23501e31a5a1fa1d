"""Rule download_cifar10: verify (or fetch) the CIFAR-10 archive and record it (advneurons.data.acquire_cifar10)."""

from advneurons import runtime
from advneurons.data import acquire_cifar10

if "snakemake" not in globals():  # by hand: python workflow_scripts/<step>.py <output file> [--configfile ...]
    from advneurons.workflow.standalone import mock_snakemake

    snakemake = mock_snakemake(__file__)
smk = snakemake
runtime.configure_logging(smk.log[0])
acquire_cifar10(smk.output[0], url=smk.params.url, md5=smk.params.md5)
