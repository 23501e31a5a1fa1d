import pytest
import torch

from advneurons.runtime import setup


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    # Tests share a 2-core machine with whatever else runs; one thread keeps them fast and deterministic.
    setup(threads=1)


@pytest.fixture
def tiny_vgg():
    from advneurons.models import build_model

    torch.manual_seed(0)
    return build_model("vgg16", "digits", width=0.0625).eval()
