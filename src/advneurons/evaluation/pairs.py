"""Dual pair sets: clean images, their perturbed versions, labels and both predictions.

A pair set is an uncompressed ``.npz``. `open_pairs` memory-maps its arrays straight out of the zip
(np.savez stores members uncompressed and contiguous), so consumers stream over any number of pairs in
batches without loading the set into memory.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from advneurons.attacks import AttackSpec, run_attack
from advneurons.runtime import atomic_path, fast_batch, generator, model_device
from advneurons.data import load_split
from advneurons.integrity import write_record
from advneurons.models.checkpoint import load_model
from advneurons.models.inference import for_attacks
from advneurons.runtime import metadata, write_json

log = logging.getLogger(__name__)

FIELDS = ("clean", "perturbed", "label", "clean_pred", "perturbed_pred", "index")


class PairSetError(RuntimeError):
    pass


@dataclass
class PairSet:
    clean: np.ndarray  # float32 (N, 3, 32, 32) in [0, 1]
    perturbed: np.ndarray  # float32 (N, 3, 32, 32) in [0, 1]
    label: np.ndarray  # int64 (N,)
    clean_pred: np.ndarray  # int64 (N,)
    perturbed_pred: np.ndarray  # int64 (N,)
    index: np.ndarray  # int64 (N,): position in the source split

    def __len__(self) -> int:
        return len(self.label)

    def batches(self, batch_size: int, desc: str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(clean, perturbed) float tensors, `batch_size` pairs at a time, read lazily."""
        starts = range(0, len(self), batch_size)
        for start in tqdm(starts, desc=desc, disable=desc is None, leave=False, mininterval=5.0):
            stop = start + batch_size
            yield torch.from_numpy(np.array(self.clean[start:stop])), torch.from_numpy(np.array(self.perturbed[start:stop]))

    def accuracy(self) -> tuple[float, float]:
        """(clean accuracy, accuracy on the perturbed images)."""
        n = max(1, len(self))
        return float((self.clean_pred == self.label).sum() / n), float((self.perturbed_pred == self.label).sum() / n)


def save_pairs(pairs: PairSet, path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object keeps numpy from appending another .npz
            np.savez(fh, **{name: getattr(pairs, name) for name in FIELDS})
    write_record(path)  # its sha256, checked before later runs read it (advneurons.integrity)


def _memmap_member(path: Path, zf: zipfile.ZipFile, name: str) -> np.ndarray:
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        with zf.open(name) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)
    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        local = raw.read(30)
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        data_start = info.header_offset + 30 + name_len + extra_len
        raw.seek(data_start)
        version = np.lib.format.read_magic(raw)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(raw)
        offset = raw.tell()
    if dtype.hasobject:
        raise PairSetError(f"{path}:{name} holds Python objects; a pair set never does")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=offset)


def open_pairs(path: Path) -> PairSet:
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            missing = [f for f in FIELDS if f + ".npy" not in names]
            if missing:
                raise PairSetError(f"{path} is not a pair set: missing {', '.join(missing)}")
            arrays = {f: _memmap_member(path, zf, f + ".npy") for f in FIELDS}
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise PairSetError(f"{path} is not a readable pair set: {exc}") from exc
    return PairSet(**arrays)


def select_subset(n_total: int, n_images: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of size n_images (all if None or too large)."""
    if n_images is None or n_images >= n_total:
        return np.arange(n_total)
    g = generator(seed)
    return np.sort(torch.randperm(n_total, generator=g)[:n_images].numpy())


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def generate_pairs(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: AttackSpec,
    n_images: int | None,
    seed: int,
    batch_size: int = 256,
) -> PairSet:
    """Attack a seeded subset of the images (untargeted) and return the dual pair set."""
    model.eval()
    dev = model_device(model)
    index = select_subset(len(labels), n_images, seed)
    gen = generator(seed + 7919)
    out = {name: [] for name in FIELDS}
    for start in tqdm(range(0, len(index), batch_size), desc=attack.describe(), mininterval=5.0):
        idx = torch.from_numpy(index[start : start + batch_size])
        x, y = fast_batch(images[idx].to(dev), model), labels[idx].to(dev)
        x_adv = run_attack(attack, model, x, y, generator=gen)
        out["clean"].append(x.cpu().numpy())
        out["perturbed"].append(x_adv.cpu().numpy())
        out["label"].append(y.cpu().numpy())
        out["clean_pred"].append(predict(model, x).cpu().numpy())
        out["perturbed_pred"].append(predict(model, x_adv).cpu().numpy())
        out["index"].append(idx.numpy())
    arrays = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}
    return PairSet(
        clean=arrays["clean"].astype(np.float32),
        perturbed=arrays["perturbed"].astype(np.float32),
        label=arrays["label"].astype(np.int64),
        clean_pred=arrays["clean_pred"].astype(np.int64),
        perturbed_pred=arrays["perturbed_pred"].astype(np.int64),
        index=arrays["index"].astype(np.int64),
    )


def attack_pairs(
    model_path: Path,
    test_path: Path,
    attack_cfg: dict,
    n_images: int | None,
    seed: int,
    batch_size: int,
    out_path: Path,
    meta_path: Path,
) -> dict:
    """Workflow step: attack the test split with one configured attack and store the pair set."""

    attack = AttackSpec.from_config(attack_cfg)  # rejects a bad attack before any expensive work

    model, ckpt = load_model(model_path)
    for_attacks(model)
    images, labels = load_split(test_path)
    pairs = generate_pairs(model, images, labels, attack, n_images, seed, batch_size)
    save_pairs(pairs, out_path)
    clean_acc, adv_acc = pairs.accuracy()
    linf = float(np.abs(pairs.perturbed - pairs.clean).max()) if len(pairs) else 0.0
    meta = metadata(
        "attack_pairs",
        {"attack": attack_cfg, "n_images": n_images, "batch_size": batch_size, "model": str(model_path)},
        seed=seed,
        attack=attack.describe(),
        n_pairs=len(pairs),
        clean_accuracy=clean_acc,
        perturbed_accuracy=adv_acc,
        max_linf_255=linf * 255,
        model_meta=ckpt.get("meta", {}).get("params"),
    )
    write_json(meta, meta_path)
    log.info("%s: clean %.4f, perturbed %.4f on %d pairs", attack.describe(), clean_acc, adv_acc, len(pairs))
    return meta
