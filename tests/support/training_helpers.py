"""Shared test helpers: 96-image digits splits and one call that trains a tiny VGG16 on them."""

from advneurons import data
from advneurons.training.loop import train_model


def write_small_splits(root, n: int = 96):
    """Train/val/test split files of `n` digits each under `root` (seeded)."""
    parts = data.prepare_digits(0.2, 0.1, 0)
    for name, split in parts.items():
        data.save_split(data.Split(split.images[:n], split.labels[:n]), root / f"{name}.npz")
    return root


def train_tiny(splits, out, cfg, **kw):
    """train_model on a width-1/16 VGG16 with seed 3, every output under `out`."""
    return train_model(
        splits / "train.npz", splits / "val.npz", "vgg16", "digits", 0.0625, cfg, seed=3,
        model_out=out / "model.pt", metrics_out=out / "metrics.csv", metadata_out=out / "meta.json",
        resume_path=out / "resume.pt", **kw,
    )
