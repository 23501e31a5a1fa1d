"""Small CIFAR-10 archives in the official format (cifar-10-python.tar.gz: python pickles of dicts), written by
the tests themselves: the real archive cannot be downloaded on the test machines."""

import hashlib
import io
import pickle
import tarfile

import numpy as np


def batch_blob(n, seed, label_key="labels", learnable=False):
    """One pickled batch of ``n`` images. ``learnable``: each class a mean colour and a stripe of its own plus
    noise, so that a model trained on a few hundred images does better than chance (the analyses need some
    correctly classified images); otherwise uniform noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    if learnable:
        images = rng.normal(0, 30, (n, 3, 32, 32))
        colours = np.random.default_rng(1234).integers(40, 216, (10, 3))
        images += colours[labels][:, :, None, None]
        for i, cls in enumerate(labels):
            images[i, :, 3 * cls : 3 * cls + 3, :] += 60
        data = np.clip(images, 0, 255).astype(np.uint8).reshape(n, 3072)
    else:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    batch = {
        "batch_label": "testing batch 1 of 1",
        label_key: labels.tolist(),
        "data": data,
        "filenames": [f"img_{i}.png" for i in range(n)],
    }
    return pickle.dumps(batch, protocol=2)


def write_tiny_cifar(path, per_batch=20, members=None, n_test=None, learnable=False):
    """A cifar-10-python.tar.gz in the official layout with ``per_batch`` images in each of the five training
    batches and ``n_test`` (default ``per_batch``) in the test batch; returns its md5."""
    blobs = members or {
        **{f"cifar-10-batches-py/data_batch_{i}": batch_blob(per_batch, i, learnable=learnable) for i in range(1, 6)},
        "cifar-10-batches-py/test_batch": batch_blob(n_test or per_batch, 99, learnable=learnable),
        "cifar-10-batches-py/batches.meta": pickle.dumps({"label_names": [str(i) for i in range(10)]}, protocol=2),
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return hashlib.md5(path.read_bytes()).hexdigest()
