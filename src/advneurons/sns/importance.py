"""Targeted adversarial sets, important neurons and per-target sensitive neurons (TIP Sec. IV-B/C, ECCV Sec. 3).

For every target class y:

* D^y = test images whose label is not y; targeted L-inf PGD pushes each towards y; the adversarial set
  D-bar^y keeps the successful ones (F(x') = y).
* Sensitivity (TIP Eq 1) of every channel of every layer over the pairs of D-bar^y; Omega^y_l = its top-k.
  The penultimate representation (VGG pool5, ResNet global average pool; `model.penultimate()`) is hooked
  like the conv layers under the name "penultimate"; each of its units is one channel.
* Importance of penultimate channel m for image x' and class y: phi_m(x', y) = F_{L-1}^m(x') * W[y, m], with
  W the weight of the final linear layer (the channel's contribution to logit y). Pi^y(x') = the k channels
  with the largest phi, best first. Gamma^y = the k channels with the most votes over D-bar^y, where rank r of
  each Pi^y(x') gives k - r + 1 votes.

Ties are broken by the lower channel index everywhere so that selections are deterministic.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from advneurons.models.hooks import captured_outputs
from advneurons.evaluation.pairs import FIELDS, PairSet, open_pairs, predict
from advneurons.runtime import atomic_path, fast_batch, generator, metadata, model_device, write_json
from advneurons.evaluation.sensitivity import SensitivityAccumulator
from advneurons.models.architectures import DEFAULT_SITE
from advneurons.sns.common import PENULTIMATE, layers_with_penultimate
from advneurons.attacks import AttackSpec, pgd_linf
from advneurons.data import load_split
from advneurons.models.checkpoint import load_model
from advneurons.models.inference import for_attacks

log = logging.getLogger(__name__)

DEFAULT_K = 20


# ------------------------------------------------------------------------------------------- importance
def channel_importance(features: torch.Tensor, weight: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
    """phi (N, C): penultimate features (N, C) times the fc weights of the target class(es).

    `target` is one class for the whole batch or a (N,) tensor of classes.
    """
    if features.dim() != 2:
        raise ValueError(f"penultimate features must be (N, C), got shape {tuple(features.shape)}")
    if weight.shape[1] != features.shape[1]:
        raise ValueError(f"fc weight has {weight.shape[1]} inputs but the features have {features.shape[1]} channels")
    rows = weight[target] if isinstance(target, int) else weight[target.long()]
    return features * rows


def top_k_desc(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of each row, largest first; ties go to the lower index."""
    scores = np.atleast_2d(np.asarray(scores))
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k]


def important_neurons(phi: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """Pi^y(x') for every row of phi (N, C): (N, k) channel indices ranked by phi, best first."""
    return top_k_desc(phi, k)


def vote_counts(pi: np.ndarray, n_channels: int, k: int | None = None) -> np.ndarray:
    """Weighted votes per channel: rank r (1-based) of each row of `pi` gives k - r + 1 votes."""
    pi = np.atleast_2d(np.asarray(pi, dtype=np.int64))
    k = pi.shape[1] if k is None else k
    if pi.shape[1] > k:
        raise ValueError(f"rankings hold {pi.shape[1]} channels but k = {k}")
    votes = np.zeros(n_channels, dtype=np.int64)
    weights = k - np.arange(pi.shape[1])
    for row in pi:
        np.add.at(votes, row, weights)
    return votes


def ranked_by(values: np.ndarray, k: int) -> list[int]:
    """The k channels with the largest values, largest first, ties to the lower channel index."""
    return [int(c) for c in top_k_desc(np.asarray(values)[None, :], k)[0]]


# ------------------------------------------------------------------------------------------ targeted sets
def compute_targeted_pairs(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    steps: int,
    n_per_class: int | None,
    seed: int,
    step_size: float | None = None,
    random_start: bool = False,
    batch_size: int = 256,
    num_classes: int | None = None,
) -> tuple[PairSet, np.ndarray, pd.DataFrame]:
    """Targeted L-inf PGD sets for every class (eps and step size in [0, 1] units).

    For target y, up to `n_per_class` images with label != y (a seeded subset, the same draw whatever the
    model) are attacked towards y. Returns the successful pairs of all classes in one PairSet, their target
    classes, and a per-class count table (attempted, successful).
    """

    model.eval()
    where = model_device(model)
    labels = labels.long()
    num_classes = int(num_classes if num_classes is not None else int(labels.max()) + 1)
    gen_pgd = generator(seed + 7919)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in (*FIELDS, "target")}
    counts = []
    for target in tqdm(range(num_classes), desc="targeted PGD", mininterval=5.0):
        candidates = torch.nonzero(labels != target).flatten()
        if n_per_class is not None and n_per_class < len(candidates):
            pick = torch.randperm(len(candidates), generator=generator(seed * 1000 + target))[:n_per_class]
            candidates = candidates[pick.sort().values]
        n_ok = 0
        for start in range(0, len(candidates), batch_size):
            idx = candidates[start : start + batch_size]
            x, y = fast_batch(images[idx].to(where), model), labels[idx].to(where)
            goal = torch.full_like(y, target)
            x_adv = pgd_linf(model, x, goal, eps, steps, step_size, random_start, targeted=True, generator=gen_pgd)
            adv_pred = predict(model, x_adv).cpu()
            ok = adv_pred == target
            n_ok += int(ok.sum())
            parts["clean"].append(x.cpu()[ok].numpy())
            parts["perturbed"].append(x_adv.cpu()[ok].numpy())
            parts["label"].append(y.cpu()[ok].numpy())
            parts["clean_pred"].append(predict(model, x).cpu()[ok].numpy())
            parts["perturbed_pred"].append(adv_pred[ok].numpy())
            parts["index"].append(idx[ok].numpy())
            parts["target"].append(np.full(int(ok.sum()), target, dtype=np.int64))
        counts.append({"target": target, "attempted": len(candidates), "successful": n_ok})
    shape = (0, *images.shape[1:])
    arrays = {
        k: (np.concatenate(v) if v else np.zeros(shape if k in ("clean", "perturbed") else (0,)))
        for k, v in parts.items()
    }
    pairs = PairSet(
        clean=arrays["clean"].astype(np.float32).reshape(-1, *images.shape[1:]),
        perturbed=arrays["perturbed"].astype(np.float32).reshape(-1, *images.shape[1:]),
        label=arrays["label"].astype(np.int64),
        clean_pred=arrays["clean_pred"].astype(np.int64),
        perturbed_pred=arrays["perturbed_pred"].astype(np.int64),
        index=arrays["index"].astype(np.int64),
    )
    table = pd.DataFrame(counts)
    table["success_rate"] = table["successful"] / table["attempted"].clip(lower=1)
    return pairs, arrays["target"].astype(np.int64), table


def save_targeted_pairs(pairs: PairSet, target: np.ndarray, path: Path) -> None:
    """A pair set file (readable by `open_pairs`) with one more member, ``target``."""
    if len(target) != len(pairs):
        raise ValueError(f"{len(target)} targets for {len(pairs)} pairs")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{name: getattr(pairs, name) for name in FIELDS}, target=np.asarray(target, np.int64))


def open_targeted_pairs(path: Path) -> tuple[PairSet, np.ndarray]:
    """The pairs (memory-mapped) and the target class of each pair."""
    pairs = open_pairs(path)
    with np.load(path, allow_pickle=False) as f:
        if "target" not in f.files:
            raise ValueError(f"{path} is a pair set without targets; make it with targeted_pairs")
        target = f["target"].astype(np.int64)
    if len(target) != len(pairs):
        raise ValueError(f"{path}: {len(target)} targets for {len(pairs)} pairs")
    return pairs, target


def targeted_pairs(
    model_path: Path,
    test_path: Path,
    attack_cfg: dict,
    n_per_class: int | None,
    seed: int,
    batch_size: int,
    out_path: Path,
    meta_path: Path,
) -> dict:
    """Workflow step: targeted L-inf PGD sets towards every class, successful pairs only, in one file.

    `attack_cfg` is a config entry of type "pgd" or "pgd_targeted" (eps, step_size in 1/255 units; steps;
    random_start); every class is the target in turn, so a pgd_targeted entry's own target rule is not used.
    Writes `out_path` (pair set + ``target`` member, see `open_targeted_pairs`) and `meta_path` (per-class
    attempted/successful counts).
    """

    spec = AttackSpec.from_config(attack_cfg)
    if spec.type not in ("pgd", "pgd_targeted"):
        raise ValueError(f"targeted sets need an L-inf PGD attack (type 'pgd' or 'pgd_targeted'), got {spec.type!r}")
    if n_per_class is not None and n_per_class < 1:
        raise ValueError(f"n_per_class must be positive or None, got {n_per_class}")
    # The same budget as an untargeted spec, only to describe it (a pgd_targeted spec names its own target rule).
    as_pgd = AttackSpec(
        type="pgd", eps=spec.eps, steps=spec.steps, step_size=spec.step_size, random_start=spec.random_start
    )
    model, ckpt = load_model(model_path)
    for_attacks(model)
    images, labels = load_split(test_path)
    pairs, target, counts = compute_targeted_pairs(
        model,
        images,
        labels,
        spec.eps,
        spec.steps,
        n_per_class,
        seed,
        spec.step_size,
        spec.random_start,
        batch_size,
        num_classes=ckpt.get("num_classes"),
    )
    save_targeted_pairs(pairs, target, out_path)
    meta = metadata(
        "targeted_pairs",
        {"attack": attack_cfg, "n_per_class": n_per_class, "batch_size": batch_size, "model": str(model_path)},
        seed=seed,
        attack=f"targeted towards every class: {as_pgd.describe()}",
        n_pairs=len(pairs),
        per_class=counts.to_dict(orient="records"),
    )
    write_json(meta, meta_path)
    log.info("targeted sets: %d successful pairs; per class %s", len(pairs), counts["successful"].tolist())
    return meta


# ---------------------------------------------------------------------------------- per-target neurons
@torch.no_grad()
def compute_targeted_neurons(
    model: nn.Module, pairs: PairSet, target: np.ndarray, k: int = DEFAULT_K, batch_size: int = 256,
    site: str = DEFAULT_SITE,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per target class: sensitivity of every channel of every layer, and penultimate importance votes.

    Returns (sensitivity, importance):
      sensitivity: target, layer, depth, channel, sensitivity, n_pairs (TIP Eq 1, every layer of
        `model.layers(site)` plus "penultimate" before fc);
      importance: target, channel, votes, mean_phi, n_pairs (votes from each pair's top-k by phi).
    Classes without successful pairs are absent from both tables.
    """
    model.eval()
    layers = layers_with_penultimate(model, site)
    weight = model.fc.weight.detach()
    n_channels = weight.shape[1]
    sens_rows, imp_rows = [], []
    classes = np.unique(target)
    for y in tqdm(classes, desc="per-target sensitivity", mininterval=5.0):
        where = np.flatnonzero(target == y)
        with captured_outputs(model.penultimate()) as outputs, SensitivityAccumulator(layers, normalise=True) as acc:
            for start in range(0, len(where), batch_size):
                idx = where[start : start + batch_size]
                clean = torch.from_numpy(np.asarray(pairs.clean[idx]))
                adv = torch.from_numpy(np.asarray(pairs.perturbed[idx]))
                with acc.measuring():
                    model(torch.cat([clean, adv]))
                acc.count += len(idx)
        sens = acc.result()
        feats = [out[out.shape[0] // 2 :].detach() for out in outputs]  # the adversarial halves
        for depth, (name, values) in enumerate(sens.items()):
            sens_rows.append(
                pd.DataFrame(
                    {
                        "target": int(y),
                        "layer": name,
                        "depth": depth,
                        "channel": np.arange(len(values)),
                        "sensitivity": values,
                        "n_pairs": len(where),
                    }
                )
            )
        phi = channel_importance(torch.cat(feats), weight, int(y)).numpy()
        votes = vote_counts(important_neurons(phi, k), n_channels, k)
        imp_rows.append(
            pd.DataFrame(
                {
                    "target": int(y),
                    "channel": np.arange(n_channels),
                    "votes": votes,
                    "mean_phi": phi.mean(0),
                    "n_pairs": len(where),
                }
            )
        )
    columns_s = ["target", "layer", "depth", "channel", "sensitivity", "n_pairs"]
    columns_i = ["target", "channel", "votes", "mean_phi", "n_pairs"]
    sensitivity = pd.concat(sens_rows, ignore_index=True) if sens_rows else pd.DataFrame(columns=columns_s)
    importance = pd.concat(imp_rows, ignore_index=True) if imp_rows else pd.DataFrame(columns=columns_i)
    return sensitivity, importance


def targeted_neurons(
    model_path: Path,
    targeted_pairs_path: Path,
    k: int,
    batch_size: int,
    sensitivity_csv: Path,
    importance_csv: Path,
    meta_path: Path,
    site: str = DEFAULT_SITE,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Workflow step: per-target sensitivity of every layer (incl. penultimate), read at `site`, and
    importance votes.

    Inputs: a model and its targeted pair file (`targeted_pairs`). Outputs: `sensitivity_csv`
    (target, layer, depth, channel, sensitivity, n_pairs), `importance_csv` (target, channel, votes,
    mean_phi, n_pairs) and `meta_path`.
    """

    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    model, _ = load_model(model_path)
    pairs, target = open_targeted_pairs(targeted_pairs_path)
    sensitivity, importance = compute_targeted_neurons(model, pairs, target, k, batch_size, site)
    with atomic_path(sensitivity_csv) as tmp:
        sensitivity.to_csv(tmp, index=False)
    with atomic_path(importance_csv) as tmp:
        importance.to_csv(tmp, index=False)
    per_class = {int(t): int(n) for t, n in zip(*np.unique(target, return_counts=True))}
    write_json(
        metadata(
            "targeted_neurons",
            {"k": k, "batch_size": batch_size, "model": str(model_path), "pairs": str(targeted_pairs_path),
             "site": site},
            n_pairs=len(pairs),
            pairs_per_target=per_class,
            penultimate_name=PENULTIMATE,
        ),
        meta_path,
    )
    return sensitivity, importance


def layer_order(sensitivity: pd.DataFrame) -> "OrderedDict[str, int]":
    """Layer name -> depth, in depth order, from a long sensitivity table."""
    pairs = sensitivity[["layer", "depth"]].drop_duplicates().sort_values("depth")
    return OrderedDict((str(a), int(b)) for a, b in zip(pairs["layer"], pairs["depth"]))
