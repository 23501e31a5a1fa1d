import pytest
import torch

from advneurons.runtime import setup
from tiny_models import tiny_model


def pytest_collection_modifyitems(items):
    """Tests under tests/workflow run the Snakemake command line: mark them `workflow` (`-m "not workflow"` runs
    the unit tests alone, in minutes); the SLURM test also `slurm`."""
    for item in items:
        parts = item.path.parts
        if "workflow" in parts[-2:-1]:
            item.add_marker(pytest.mark.workflow)
        if item.path.name == "test_slurm.py":
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    # Tests share a 2-core machine with whatever else runs; one thread keeps them fast and deterministic.
    setup(threads=1)


@pytest.fixture
def tiny_vgg():
    torch.manual_seed(0)
    return tiny_model("vgg16").eval()


TINY_EXTERNAL = """
external_models:
  small:
    source: {{factory: "external_factory:small_cnn", kwargs: {{width: 8}}, checkpoint: external/small.pt}}
    normalization: {{mean: {mean}, std: {std}}}
    meansparse: true
    ig_defense: true
    suppression: true
    sns: {{training: [sns_sen], layers: [block_b, plain], sns_lambda: 5}}
    psn: {{n_images: 1, nodes: relu_inputs, heatmap_layers: [norm_b]}}
"""


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A working directory where the whole DAG has run on the tiny config (presets/quick.yaml)."""
    import shutil

    from workflow_helpers import ROOT, snakemake

    from external_factory import MEAN, STD, write_trained_checkpoint

    workdir = tmp_path_factory.mktemp("tiny")
    shutil.copy(ROOT / "presets" / "quick.yaml", workdir / "config.yaml")
    # one external model (a small factory network trained outside the pipeline), defended by MeanSparse and
    # IG-Defense and fine-tuned by SNS too; its weights path is relative to the working directory, as a user's would be
    write_trained_checkpoint(workdir / "external" / "small.pt")
    with open(workdir / "config.yaml", "a") as fh:
        fh.write(TINY_EXTERNAL.format(mean=MEAN, std=STD))
    # 226 jobs: about 20 minutes on 2 cores, so the default 20-minute limit of `snakemake` is too tight
    proc = snakemake(workdir, "all", timeout=3000)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


# Session fixtures of the SNS analysis tests (a tiny VGG16 trained on a digits subset), registered here so that
# every test module shares one trained model.
from sns_fixtures import digits_files, trained_vgg, trained_vgg_path  # noqa: E402,F401
