"""Datasets as uint8 arrays of shape (N, 3, 32, 32) with int64 labels, split into train/val/test.

`digits` is scikit-learn's bundled handwritten digits (8x8, 17 grey levels) upscaled to 3x32x32: it ships
inside the package, so the default run needs no network. `cifar10` goes through torchvision's download with
checksum verification, or uses an already extracted `cifar-10-batches-py/` folder whose batch files are
checked one by one; its python batches are read with a restricted unpickler so a foreign archive cannot
run code.

A split file is an ``.npz`` with ``images`` (uint8) and ``labels`` (int64); `load_split` returns float
tensors in [0, 1].
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import socket
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from advneurons.integrity import write_record
from advneurons.runtime import atomic_path, metadata, write_json

DATASETS = ("digits", "cifar10")
SPLITS = ("train", "val", "test")
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"  # what the archive extracts to
_CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
# md5 of each batch file of the official archive (as torchvision lists them): an extracted folder is checked
# against these, file by file.
CIFAR10_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}


class DatasetError(RuntimeError):
    """A dataset could not be obtained or read; the message says what to do."""


@dataclass
class Split:
    images: np.ndarray  # uint8, (N, 3, 32, 32)
    labels: np.ndarray  # int64, (N,)

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1:] != (3, 32, 32):
            raise DatasetError(f"images must be uint8 (N, 3, 32, 32), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise DatasetError(f"labels shape {self.labels.shape} does not match {len(self.images)} images")


# ----------------------------------------------------------------------------------------------- digits
def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits upscaled bilinearly to 32x32, replicated to 3 channels, as uint8."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    big = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    images = (big * 255.0).round().to(torch.uint8).repeat(1, 3, 1, 1).numpy()
    return images, bunch.target.astype(np.int64)


def stratified_split(
    labels: np.ndarray, test_fraction: float, val_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Index arrays for train/val/test, stratified by label and fixed by `seed`.

    `val_fraction` is a fraction of the whole set, carved out of what is not test.
    """
    from sklearn.model_selection import train_test_split

    if not (0 < test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ValueError(f"bad split fractions: test={test_fraction}, val={val_fraction}")
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=test_fraction, random_state=seed, stratify=labels)
    if val_fraction > 0:
        val_share = val_fraction / (1.0 - test_fraction)
        train, val = train_test_split(rest, test_size=val_share, random_state=seed + 1, stratify=labels[rest])
    else:
        train, val = rest, rest[:0]
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def prepare_digits(test_fraction: float, val_fraction: float, seed: int) -> dict[str, Split]:
    images, labels = load_digits_images()
    parts = stratified_split(labels, test_fraction, val_fraction, seed)
    return {name: Split(images[idx], labels[idx]) for name, idx in parts.items()}


# ---------------------------------------------------------------------------------------------- CIFAR-10
def _manual_instructions(archive: Path, md5: str, url: str) -> str:
    return (
        f"Download {url} by hand (md5 {md5}) and place it at {archive.resolve()}, or extract it there "
        f"({archive.parent.resolve() / CIFAR10_FOLDER}/); the workflow then verifies and uses it without "
        "touching the network."
    )


def verify_cifar10_folder(folder: Path, batch_md5: dict[str, str] | None = None) -> Path:
    """Check an extracted `cifar-10-batches-py/` folder: every batch file present with its md5."""
    expected = CIFAR10_BATCH_MD5 if batch_md5 is None else batch_md5
    folder = Path(folder)
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise DatasetError(f"CIFAR-10 folder {folder} lacks {', '.join(missing)}: extract the whole official "
                           "archive there")
    wrong = [f"{name} (md5 {actual}, expected {md5})" for name, md5 in expected.items()
             if (actual := file_md5(folder / name)) != md5]
    if wrong:
        raise DatasetError(f"CIFAR-10 folder {folder} is not the official data: {'; '.join(wrong)}")
    return folder


def file_hash(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_md5(path: Path) -> str:
    return file_hash(path, "md5")


def fetch_cifar10_archive(data_dir: Path, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5, timeout: float = 20.0,
                          batch_md5: dict[str, str] | None = None) -> Path:
    """Return the verified CIFAR-10 archive in `data_dir`, or its extracted `cifar-10-batches-py/` folder
    there, downloading the archive if neither is in place.

    A file or folder already in place (put there by hand) is checked and never re-downloaded or deleted;
    the archive wins when both are there. Offline, the download fails after at most `timeout` seconds per
    connection attempt, with instructions.
    """
    from torchvision.datasets.utils import download_url

    data_dir = Path(data_dir)
    archive = data_dir / CIFAR10_ARCHIVE
    if not archive.exists() and (data_dir / CIFAR10_FOLDER).is_dir():
        return verify_cifar10_folder(data_dir / CIFAR10_FOLDER, batch_md5)
    if archive.exists():
        actual = file_md5(archive)
        if actual != md5:
            raise DatasetError(
                f"CIFAR-10 archive {archive} is corrupt or not the official one (md5 {actual}, expected {md5}). "
                + _manual_instructions(archive, md5, url)
            )
        return archive
    data_dir.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        download_url(url, str(data_dir), filename=CIFAR10_ARCHIVE, md5=md5)
    except Exception as exc:  # network errors come in many types (URLError, OSError, HTTPError, timeout)
        partial = archive.with_suffix(archive.suffix + ".partial")
        if archive.exists():  # keep what was fetched for inspection, out of the way of the next attempt
            archive.replace(partial)
        raise DatasetError(f"could not download CIFAR-10 ({type(exc).__name__}: {exc}). "
                           + _manual_instructions(archive, md5, url)) from exc
    finally:
        socket.setdefaulttimeout(previous)
    if not archive.exists() or file_md5(archive) != md5:
        raise DatasetError("CIFAR-10 download did not verify. " + _manual_instructions(archive, md5, url))
    return archive


ARCHIVE_RECORD_SUFFIX = ".verified.json"


def download_cifar10(record_path: Path, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
                     batch_md5: dict[str, str] | None = None) -> dict:
    """Workflow step: make sure the verified CIFAR-10 archive is in place and write a record of it.

    The record (``<data_dir>/cifar-10-python.tar.gz.verified.json``) is the rule's output, not the
    archive: Snakemake deletes a rule's outputs before re-running it (after a change of ``url``, say),
    and the archive, often placed by hand, must never be deleted or fetched again. An archive already in
    place is verified by md5 and kept, as is an extracted `cifar-10-batches-py/` folder beside it (each
    batch file by its md5); when neither is there the archive is downloaded. The record names the archive
    (or folder), its md5 and how it got there; :func:`archive_from_record` reads it back.
    """
    import time

    record_path = Path(record_path)
    if not record_path.name.endswith(ARCHIVE_RECORD_SUFFIX):
        raise ValueError(f"an archive record ends in {ARCHIVE_RECORD_SUFFIX}, got {record_path.name}")
    archive = record_path.with_name(record_path.name[: -len(ARCHIVE_RECORD_SUFFIX)])
    if archive.name != CIFAR10_ARCHIVE:
        raise ValueError(f"the record of {archive} names no CIFAR-10 archive ({CIFAR10_ARCHIVE})")
    found = archive.exists() or (archive.parent / CIFAR10_FOLDER).is_dir()
    source = fetch_cifar10_archive(archive.parent, url=url, md5=md5, batch_md5=batch_md5)
    record = {"archive": str(source.resolve()), "md5": md5 if source.is_file() else None,
              "batch_md5": None if source.is_file() else (batch_md5 or CIFAR10_BATCH_MD5),
              "source": "found in place" if found else f"downloaded from {url}",
              "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with atomic_path(record_path) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=2) + "\n")
    return record


def archive_from_record(record_path: Path) -> Path:
    """The archive a record of :func:`download_cifar10` names (it must still be there)."""
    record = json.loads(Path(record_path).read_text())
    archive = Path(record["archive"])
    if not archive.exists():
        raise DatasetError(f"the CIFAR-10 archive {archive} recorded in {record_path} is gone. Place it there again, "
                           f"or delete {record_path} to have the workflow download it.")
    return archive


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that admits only what CIFAR batches contain: dicts, lists, bytes and numpy arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise DatasetError(f"CIFAR-10 batch refers to {module}.{name}, which a data batch never needs; refusing it")


def _read_batch(blob: bytes, member: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(blob), encoding="latin1").load()
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"CIFAR-10 batch {member} is not a readable python batch: {exc}") from exc
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DatasetError(f"CIFAR-10 batch {member} lacks 'data' or 'labels'")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DatasetError(f"CIFAR-10 batch {member} has data {data.dtype} {data.shape} and {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"CIFAR-10 batch {member} has labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10_archive(archive: Path) -> tuple[Split, Split]:
    """Official train and test sets from a `cifar-10-python.tar.gz` (members under cifar-10-batches-py/), or
    from the `cifar-10-batches-py/` folder it extracts to."""
    wanted = {f"cifar-10-batches-py/{name}" for name in (*_CIFAR10_TRAIN_BATCHES, "test_batch")}
    blobs: dict[str, bytes] = {}
    if Path(archive).is_dir():
        for member in wanted:
            path = Path(archive) / member.split("/", 1)[1]
            if path.is_file():
                blobs[member] = path.read_bytes()
    else:
        blobs = _archive_members(archive, wanted)
    missing = sorted(wanted - set(blobs))
    if missing:
        raise DatasetError(f"{archive} lacks {', '.join(missing)}: not an official cifar-10-batches-py archive")
    train = [_read_batch(blobs[f"cifar-10-batches-py/{n}"], n) for n in _CIFAR10_TRAIN_BATCHES]
    test = _read_batch(blobs["cifar-10-batches-py/test_batch"], "test_batch")
    return (
        Split(np.concatenate([d for d, _ in train]), np.concatenate([lab for _, lab in train])),
        Split(*test),
    )


def _archive_members(archive: Path, wanted: set[str]) -> dict[str, bytes]:
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                if member.name in wanted and member.isfile():
                    blobs[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{archive} is not a readable tar.gz archive: {exc}") from exc
    return blobs


def prepare_cifar10(archive: Path, val_fraction: float, seed: int) -> dict[str, Split]:
    """Official test set; a stratified validation set held out of the official training set."""
    from sklearn.model_selection import train_test_split

    train, test = read_cifar10_archive(archive)
    if val_fraction > 0:
        index = np.arange(len(train.labels))
        keep, val = train_test_split(index, test_size=val_fraction, random_state=seed, stratify=train.labels)
        keep, val = np.sort(keep), np.sort(val)
        return {
            "train": Split(train.images[keep], train.labels[keep]),
            "val": Split(train.images[val], train.labels[val]),
            "test": test,
        }
    return {"train": train, "val": Split(train.images[:0], train.labels[:0]), "test": test}


def subset_split(split: Split, n: int | None, seed: int) -> Split:
    """A seeded, class-balanced subset of ``n`` images of ``split`` (all of it when ``n`` is None or at
    least its size), in the split's order.

    Images are drawn in a seeded random order, taking each class's first, then each class's second, and so
    on, so the classes stay as balanced as the split allows. Used by rehearsals (``dataset.max_images``):
    the same data pipeline on a few hundred images.
    """
    if n is None or n >= len(split.labels):
        return split
    if n < 1:
        raise ValueError(f"a split subset needs at least one image, got {n}")
    order = np.random.default_rng(seed).permutation(len(split.labels))
    rank = np.empty(len(order), dtype=np.int64)
    for cls in np.unique(split.labels):
        members = order[split.labels[order] == cls]
        rank[members] = np.arange(len(members))
    picked = np.sort(order[np.argsort(rank[order], kind="stable")][:n])
    return Split(split.images[picked], split.labels[picked])


# ------------------------------------------------------------------------------------------------ files
def save_split(split: Split, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, images=split.images, labels=split.labels)
    tmp.replace(path)
    write_record(path)  # its sha256, checked before later runs read it (advneurons.integrity)


def read_split(path: Path) -> Split:
    try:
        with np.load(path, allow_pickle=False) as f:
            return Split(f["images"], f["labels"].astype(np.int64))
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{path} is not a dataset split file: {exc}") from exc


def load_split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images in [0, 1] and int64 labels."""
    split = read_split(path)
    return torch.from_numpy(split.images.astype(np.float32) / 255.0), torch.from_numpy(split.labels)


def prepare_dataset(
    name: str,
    split_seed: int,
    test_fraction: float,
    val_fraction: float,
    outputs: dict[str, Path],
    meta_path: Path,
    archive: Path | None = None,
    md5: str = CIFAR10_MD5,
    archive_record: Path | None = None,
    batch_md5: dict[str, str] | None = None,
    max_images: dict[str, int | None] | None = None,
) -> dict:
    """Workflow step: write the train/val/test split files of a dataset and a metadata JSON.

    CIFAR-10 reads ``archive`` (the archive or its extracted folder), or what ``archive_record`` names
    (:func:`download_cifar10`). ``max_images``: split name -> at most this many images
    (:func:`subset_split`, seeded by ``split_seed``); a rehearsal's cut-down data.
    """
    max_images = {k: v for k, v in (max_images or {}).items() if v is not None}
    if set(max_images) - set(SPLITS):
        raise DatasetError(f"max_images names unknown splits {sorted(set(max_images) - set(SPLITS))}; "
                           f"the splits are {', '.join(SPLITS)}")

    if name == "digits":
        parts = prepare_digits(test_fraction, val_fraction, split_seed)
    elif name == "cifar10":
        if archive is None and archive_record is not None:
            archive = archive_from_record(archive_record)
            batch_md5 = batch_md5 or json.loads(Path(archive_record).read_text()).get("batch_md5")
        if archive is None:
            raise DatasetError("CIFAR-10 needs the archive path")
        if Path(archive).is_dir():
            verify_cifar10_folder(archive, batch_md5)
        elif (actual := file_md5(archive)) != md5:
            raise DatasetError(f"CIFAR-10 archive {archive} has md5 {actual}, expected {md5}. "
                               + _manual_instructions(Path(archive), md5, CIFAR10_URL))
        parts = prepare_cifar10(archive, val_fraction, split_seed)
    else:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    parts = {k: subset_split(v, max_images.get(k), split_seed) for k, v in parts.items()}
    for split_name in SPLITS:
        save_split(parts[split_name], outputs[split_name])
    counts = {k: {"n": int(len(v.labels)), "per_class": np.bincount(v.labels, minlength=10).tolist()} for k, v in parts.items()}
    meta = metadata(
        "prepare_dataset",
        {"name": name, "split_seed": split_seed, "test_fraction": test_fraction, "val_fraction": val_fraction,
         "max_images": max_images or None},
        seed=split_seed,
        splits=counts,
    )
    write_json(meta, meta_path)
    return meta
