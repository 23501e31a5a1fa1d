"""Model checkpoints: plain tensors and builtins only, always loaded with ``weights_only=True``.

A checkpoint records how to rebuild its model (architecture, dataset, width, classes), so later steps need
only the file. Loading refuses, with a message naming the file, anything truncated, foreign, or carrying a
pickled code payload; nothing in such a file is executed.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from advneurons.models.defended import rebuild_defense
from advneurons.models.architectures import build_model
from advneurons.runtime import atomic_path
from advneurons.data import file_hash
from advneurons.integrity import write_record

FORMAT = "advneurons-model"
FORMAT_VERSION = 1
# Metadata that differs between two runs of the same step (when it ran, on which machine and package versions,
# how long each epoch took), not between models: kept in the metadata JSON each step writes beside the
# checkpoint and left out of the checkpoint itself, so that training the same model twice gives the same bytes
# and the recorded sha256 (integrity records, the lineage columns of the tables) identifies the weights.
RUN_SPECIFIC_META = ("created", "versions", "seconds")


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used; the message says which file and why."""


def safe_load(path: Path) -> dict:
    """torch.load with weights_only=True and errors that name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses globals outside its allow-list before constructing anything.
        raise CheckpointError(
            f"refused to load {path}: it holds pickled objects other than tensors and builtins "
            f"(possibly code); nothing from it was executed ({exc})"
        ) from exc
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint: {exc}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary")
    return obj


def save_model(model: nn.Module, path: Path, arch: str, dataset: str, width: float, num_classes: int, meta: dict,
               defense: dict | None = None, external: dict | None = None) -> None:
    """``defense``: how to rebuild a defended model's structure (e.g. advneurons.defenses.meansparse) before its
    weights load; ``external``: how to rebuild an external model (advneurons.models.external); plain data only,
    so the checkpoint still loads with weights_only=True. Writes the sha256 record ``<path>.sha256.json`` beside
    it (advneurons.integrity), which the workflow checks the file against before any later run."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "dataset": dataset,
        "width": float(width),
        "num_classes": int(num_classes),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": model_meta(meta),
    }
    if defense is not None:
        payload["defense"] = defense
    if external is not None:
        payload["external"] = external
    # Serialised in memory: torch.save names the archive inside the file after the file it writes to (here a
    # temporary name), an in-memory buffer always "archive"; and the sha256 of the bytes written is recorded
    # beside the checkpoint (advneurons.integrity) without reading the file back.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    blob = buffer.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    write_record(path, hashlib.sha256(blob).hexdigest())


def model_meta(meta):
    """`meta` without its run-specific entries (RUN_SPECIFIC_META), at any depth: what a checkpoint stores."""
    if isinstance(meta, dict):
        return {k: model_meta(v) for k, v in meta.items() if k not in RUN_SPECIFIC_META}
    if isinstance(meta, list):
        return [model_meta(v) for v in meta]
    if isinstance(meta, tuple):
        return tuple(model_meta(v) for v in meta)
    return meta


def load_model(path: Path) -> tuple[nn.Module, dict]:
    """Rebuild the model stored at `path`, in eval mode, and return it with the checkpoint's fields."""
    ckpt = safe_load(path)
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an advneurons model checkpoint (no format tag {FORMAT!r})")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {ckpt.get('format_version')}, expected {FORMAT_VERSION}")
    try:
        if ckpt.get("external") is not None:
            from advneurons.models.external import build_external

            model = build_external(ckpt["external"])
        else:
            model = build_model(ckpt["arch"], ckpt["dataset"], ckpt["width"], ckpt["num_classes"])
        if ckpt.get("defense") is not None:
            model = rebuild_defense(model, ckpt["defense"])
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not match the model it describes: {exc}") from exc
    model.eval()
    return model, ckpt


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (ties a resume file to the exact checkpoint it continues from)."""

    return file_hash(path, "sha256")
