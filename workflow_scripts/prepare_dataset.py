"""Rule prepare_dataset: write the train/val/test split files (advneurons.data.prepare_dataset)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from advneurons import runtime
from advneurons.data import prepare_dataset
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
runtime.setup(smk.threads)
ds = smk.params.dataset
prepare_dataset(
    name=ds["name"],
    split_seed=ds["split_seed"],
    test_fraction=ds["test_fraction"],
    val_fraction=ds["val_fraction"],
    outputs={"train": smk.output.train, "val": smk.output.val, "test": smk.output.test},
    meta_path=smk.output.meta,
    archive_record=smk.input.get("archive_record"),
    md5=ds.get("md5", ""),
    batch_md5=ds.get("batch_md5"),
    max_images=ds.get("max_images"),
)
runtime.end_step()
