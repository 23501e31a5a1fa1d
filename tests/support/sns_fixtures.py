"""Session fixtures for the SNS analysis tests: a tiny VGG16 trained for a few epochs on a digits subset.

Registered in conftest.py so that every test module shares one session-scoped trained model.
"""

from pathlib import Path

import numpy as np
import pytest
import torch


def gaussian_noise(sigma: float):
    """Test-local Gaussian noise perturbation f(model, x, y, generator) (the package's own lives in attacks)."""

    def noise(model, x, y, generator):
        return (x + sigma * torch.randn(x.shape, generator=generator)).clamp(0.0, 1.0)

    noise.__name__ = f"gaussian sigma={sigma:g}"
    return noise


@pytest.fixture(scope="session")
def digits_files(tmp_path_factory) -> dict[str, Path]:
    """600 training and 120 test digits (stratified, seeded) as split files."""
    from advneurons.data import Split, load_digits_images, save_split, stratified_split

    root = tmp_path_factory.mktemp("sns_digits")
    images, labels = load_digits_images()
    index = stratified_split(labels, 0.2, 0.0, seed=0)
    train = np.random.default_rng(0).choice(index["train"], 600, replace=False)
    test = index["test"][:120]
    paths = {"train": root / "train.npz", "test": root / "test.npz"}
    save_split(Split(images[train], labels[train]), paths["train"])
    save_split(Split(images[test], labels[test]), paths["test"])
    return paths


@pytest.fixture(scope="session")
def trained_vgg_path(digits_files, tmp_path_factory) -> Path:
    """A width-0.0625 VGG16 trained 3 epochs (about 90% test accuracy), saved as a checkpoint."""
    from advneurons.training.loop import TrainConfig, train_model

    root = tmp_path_factory.mktemp("sns_model")
    path = root / "model.pt"
    train_model(
        digits_files["train"],
        None,
        "vgg16",
        "digits",
        0.0625,
        TrainConfig(epochs=3, batch_size=50, lr=0.05),
        0,
        path,
        root / "metrics.csv",
        root / "meta.json",
        root / "resume.pt",
    )
    return path


@pytest.fixture(scope="session")
def trained_vgg(trained_vgg_path):
    from advneurons.models.checkpoint import load_model

    model, _ = load_model(trained_vgg_path)
    return model
