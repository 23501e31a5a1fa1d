"""Rule train_model: train one model (advneurons.training.loop.train_model)."""

from advneurons.workflow.step_server import hand_over

hand_over(globals())  # in a local run, the run's warm interpreter runs this step (step_server)

from pathlib import Path

from advneurons import runtime
from advneurons.training.loop import TrainConfig, train_model
from advneurons.workflow.standalone import snakemake_object

smk = snakemake_object(globals())  # Snakemake's, or built from the command line when run by hand
runtime.configure_logging(smk.log[0])
m = smk.params.model
runtime.setup(smk.threads, m["seed"])
train_model(
    train_path=smk.input.train,
    val_path=smk.input.val,
    arch=m["arch"],
    dataset=smk.params.dataset,
    width=m["width"],
    cfg=TrainConfig.from_dict(m["training"]),
    seed=m["seed"],
    model_out=smk.output.model,
    metrics_out=smk.output.metrics,
    metadata_out=smk.output.meta,
    # Not a declared output, so Snakemake leaves it in place when a job dies and the rerun resumes.
    resume_path=Path(smk.output.model).with_name("resume.pt"),
    base_path=smk.input.get("base"),
    static_paths=[static] if isinstance(static := smk.input.get("static", []), str) else list(static),
)
runtime.end_step()
