"""Rule download_cifar10: verify (or fetch) the CIFAR-10 archive and record it (advneurons.data.download_cifar10)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.data import download_cifar10
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
download_cifar10(smk.output[0], url=smk.params.url, md5=smk.params.md5, batch_md5=smk.params.batch_md5)
runtime.end_step()
