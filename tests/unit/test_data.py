import hashlib
import os
import pickle
import tarfile
import time

import numpy as np
import pytest

from advneurons import data
from cifar_archive import batch_blob, write_tiny_cifar


def test_digits_split_is_stratified_disjoint_and_fixed():
    parts = data.prepare_digits(test_fraction=0.2, val_fraction=0.1, seed=0)
    sizes = {k: len(v.labels) for k, v in parts.items()}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == pytest.approx(0.2 * 1797, abs=2)
    assert sizes["val"] == pytest.approx(0.1 * 1797, abs=2)
    for split in parts.values():
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (3, 32, 32)
        counts = np.bincount(split.labels, minlength=10) / len(split.labels)
        np.testing.assert_allclose(counts, 0.1, atol=0.02)  # digits are ~10% per class
    # Channels are replicated grey levels and the images use the full intensity range.
    img = parts["train"].images
    assert np.array_equal(img[:, 0], img[:, 1]) and img.max() == 255 and img.min() == 0
    # Disjoint: no image index appears in two splits; same seed, same split; other seed, other split.
    idx = data.stratified_split(data.load_digits_images()[1], 0.2, 0.1, seed=0)
    assert not set(idx["train"]) & set(idx["test"]) and not set(idx["val"]) & set(idx["test"])
    assert not set(idx["train"]) & set(idx["val"])
    again = data.stratified_split(data.load_digits_images()[1], 0.2, 0.1, seed=0)
    other = data.stratified_split(data.load_digits_images()[1], 0.2, 0.1, seed=1)
    assert all(np.array_equal(idx[k], again[k]) for k in idx)
    assert not np.array_equal(idx["test"], other["test"])


def test_split_files_round_trip(tmp_path):
    parts = data.prepare_digits(0.2, 0.1, 0)
    data.save_split(parts["test"], tmp_path / "test.npz")
    x, y = data.load_split(tmp_path / "test.npz")
    assert x.dtype.is_floating_point and 0 <= x.min() and x.max() <= 1
    assert np.array_equal(y.numpy(), parts["test"].labels)


def test_cifar10_archive_in_official_format_is_read(tmp_path):
    archive = tmp_path / data.CIFAR10_ARCHIVE
    md5 = write_tiny_cifar(archive, per_batch=30)
    outputs = {s: tmp_path / f"{s}.npz" for s in data.SPLITS}
    meta = data.prepare_dataset("cifar10", 0, 0.2, 0.1, outputs, tmp_path / "meta.json", archive=archive, md5=md5)
    assert meta["splits"]["test"]["n"] == 30
    assert meta["splits"]["train"]["n"] + meta["splits"]["val"]["n"] == 150
    x, y = data.load_split(outputs["test"])
    raw = pickle.loads(batch_blob(30, 99))
    np.testing.assert_array_equal((x.numpy() * 255).round().astype(np.uint8), raw["data"].reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(y.numpy(), raw["labels"])
    # The verified archive already in place is used as is, without the network.
    assert data.fetch_cifar10_archive(tmp_path, url="http://127.0.0.1:9/none", md5=md5) == archive


def test_cifar10_checksum_mismatch_names_the_file_and_the_fix(tmp_path):
    archive = tmp_path / data.CIFAR10_ARCHIVE
    write_tiny_cifar(archive)
    with pytest.raises(data.DatasetError) as err:
        data.fetch_cifar10_archive(tmp_path, md5="0" * 32)
    msg = str(err.value)
    assert "corrupt" in msg and str(archive.resolve()) in msg and "by hand" in msg
    assert archive.exists()  # the user's file is never deleted


def test_corrupt_archive_is_a_clear_error(tmp_path):
    archive = tmp_path / data.CIFAR10_ARCHIVE
    archive.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(data.DatasetError, match="not a readable tar.gz"):
        data.read_cifar10_archive(archive)
    write_tiny_cifar(archive, members={"cifar-10-batches-py/test_batch": batch_blob(3, 0)})
    with pytest.raises(data.DatasetError, match="data_batch_1"):
        data.read_cifar10_archive(archive)


def extract(archive, folder_parent):
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(folder_parent, filter="data")
    folder = folder_parent / data.CIFAR10_FOLDER
    return folder, {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in data.CIFAR10_BATCH_MD5}


def test_an_extracted_folder_gives_the_same_splits_as_its_archive(tmp_path):
    archive = tmp_path / "a" / data.CIFAR10_ARCHIVE
    archive.parent.mkdir()
    md5 = write_tiny_cifar(archive, per_batch=30)
    folder, batch_md5 = extract(archive, tmp_path / "b")
    split = {}
    for kind, source in (("archive", archive), ("folder", folder)):
        outputs = {s: tmp_path / f"{kind}_{s}.npz" for s in data.SPLITS}
        data.prepare_dataset("cifar10", 0, 0.2, 0.1, outputs, tmp_path / f"{kind}.json", archive=source, md5=md5,
                             batch_md5=batch_md5)
        split[kind] = {s: data.read_split(outputs[s]) for s in data.SPLITS}
    for s in data.SPLITS:
        np.testing.assert_array_equal(split["archive"][s].images, split["folder"][s].images)
        np.testing.assert_array_equal(split["archive"][s].labels, split["folder"][s].labels)
    # Found in place without the archive: verified file by file, no network; the record names the folder.
    record = tmp_path / "b" / (data.CIFAR10_ARCHIVE + data.ARCHIVE_RECORD_SUFFIX)
    info = data.download_cifar10(record, url="http://127.0.0.1:9/none", md5=md5, batch_md5=batch_md5)
    assert info["archive"] == str(folder.resolve()) and info["batch_md5"] == batch_md5
    assert data.archive_from_record(record) == folder.resolve()


def test_an_extracted_folder_that_is_not_the_data_is_refused_by_file(tmp_path):
    archive = tmp_path / data.CIFAR10_ARCHIVE
    write_tiny_cifar(archive)
    folder, batch_md5 = extract(archive, tmp_path)
    archive.unlink()
    with pytest.raises(data.DatasetError, match="not the official data: data_batch_1"):
        data.fetch_cifar10_archive(tmp_path)  # checked against the official batches' md5
    (folder / "test_batch").unlink()
    with pytest.raises(data.DatasetError, match="lacks test_batch"):
        data.fetch_cifar10_archive(tmp_path, batch_md5=batch_md5)


def test_batch_with_code_payload_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    evil = pickle.dumps({"data": Payload(), "labels": [0]}, protocol=2)
    members = {f"cifar-10-batches-py/data_batch_{i}": evil for i in range(1, 6)}
    members["cifar-10-batches-py/test_batch"] = evil
    archive = tmp_path / data.CIFAR10_ARCHIVE
    write_tiny_cifar(archive, members=members)
    with pytest.raises(data.DatasetError, match="refusing"):
        data.read_cifar10_archive(archive)
    assert not (tmp_path / "pwned").exists()


def test_offline_download_fails_fast_with_instructions(tmp_path):
    started = time.monotonic()
    # Port 9 (discard) on loopback refuses connections: the same failure as having no network.
    with pytest.raises(data.DatasetError) as err:
        data.fetch_cifar10_archive(tmp_path / "cifar", url="http://127.0.0.1:9/cifar-10-python.tar.gz", timeout=5)
    assert time.monotonic() - started < 30
    msg = str(err.value)
    assert "could not download" in msg and str((tmp_path / "cifar" / data.CIFAR10_ARCHIVE).resolve()) in msg


@pytest.mark.workflow
def test_a_hand_placed_archive_survives_config_changes(tmp_path):
    """The archive is placed by hand; the workflow verifies it, and a changed url (or a re-run of the
    download rule for any reason) re-verifies it without deleting, re-fetching or re-splitting it."""
    import json

    import yaml
    from workflow_helpers import ROOT, planned_jobs, snakemake

    from advneurons.config import settings

    data_dir = tmp_path / "cifar"
    data_dir.mkdir()
    archive = data_dir / data.CIFAR10_ARCHIVE
    md5 = write_tiny_cifar(archive)
    before = (archive.read_bytes(), archive.stat().st_mtime_ns)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["dataset"].update(name="cifar10", cifar10={"data_dir": str(data_dir), "md5": md5,
                                                     "url": "http://127.0.0.1:9/unreachable.tar.gz"})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    data_id = settings.make_id("cifar10", settings.dataset_params(settings.validate_config(cfg)))
    target = f"results/{data_id}/data/metadata.json"
    proc = snakemake(tmp_path, target)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((data_dir / (data.CIFAR10_ARCHIVE + data.ARCHIVE_RECORD_SUFFIX)).read_text())
    assert record["source"] == "found in place" and record["md5"] == md5
    cfg["dataset"]["cifar10"]["url"] = "http://127.0.0.1:9/another-mirror.tar.gz"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    # the download rule re-runs (its url changed) and only re-verifies; the splits depend on the archive's md5
    assert planned_jobs(tmp_path, target) == {"download_cifar10": 1}
    proc = snakemake(tmp_path, target)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (archive.read_bytes(), archive.stat().st_mtime_ns) == before
    assert "prepare_dataset" not in proc.stderr  # re-verifying rewrote the record, not the splits


def test_max_images_takes_a_seeded_class_balanced_subset_of_each_split(tmp_path):
    archive = tmp_path / data.CIFAR10_ARCHIVE
    md5 = write_tiny_cifar(archive, per_batch=40, n_test=30)
    outputs = {s: tmp_path / f"{s}.npz" for s in data.SPLITS}
    whole = {s: tmp_path / f"whole_{s}.npz" for s in data.SPLITS}
    data.prepare_dataset("cifar10", 0, 0.2, 0.1, whole, tmp_path / "whole.json", archive=archive, md5=md5)
    meta = data.prepare_dataset("cifar10", 0, 0.2, 0.1, outputs, tmp_path / "meta.json", archive=archive, md5=md5,
                                max_images={"train": 50, "val": None, "test": 1000})
    assert meta["splits"]["train"]["n"] == 50
    assert meta["splits"]["val"]["n"] == 20 and meta["splits"]["test"]["n"] == 30  # None / above the size: all
    assert meta["params"]["max_images"] == {"train": 50, "test": 1000}
    full, part = data.read_split(whole["train"]), data.read_split(outputs["train"])
    counts = np.bincount(part.labels, minlength=10)
    available = np.bincount(full.labels, minlength=10)
    # balanced as far as the classes allow: each class gets min(available, share) with shares within one
    assert counts.max() - counts[available > counts].min() <= 1 if (available > counts).any() else True
    # every picked image is one of the split's, in the split's order
    rows = {row.tobytes(): i for i, row in enumerate(full.images.reshape(len(full.images), -1))}
    picked = [rows[row.tobytes()] for row in part.images.reshape(len(part.images), -1)]
    assert picked == sorted(picked) and np.array_equal(full.labels[picked], part.labels)
    again = data.subset_split(full, 50, 0)
    assert np.array_equal(again.images, part.images)
    assert not np.array_equal(data.subset_split(full, 50, 1).images, part.images)
    with pytest.raises(data.DatasetError, match="unknown splits"):
        data.prepare_dataset("cifar10", 0, 0.2, 0.1, outputs, tmp_path / "meta.json", archive=archive, md5=md5,
                             max_images={"training": 5})
