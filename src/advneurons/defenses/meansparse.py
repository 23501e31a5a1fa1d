"""MeanSparse (docs/methods.md, defenses): post-training sparsification of activations around their channel means.

For every ReLU input (VGG: the BN output before each ReLU; ResNet: the stem, each block's first BN and each
residual sum), with per-channel mean mu and standard deviation s measured over the training set (no
augmentation), inference replaces an activation a by mu wherever |a - mu| <= alpha * s; other activations
pass unchanged, then the ReLU applies. alpha = 0 is the undefended model.

The defended model is an ordinary checkpoint: :func:`attach` swaps each ReLU for a :class:`MeanSparseReLU`
holding mu, s and alpha as buffers, the checkpoint records ``defense = {"type": "meansparse", ...}``, and
:func:`advneurons.models.checkpoint.load_model` rebuilds that structure before loading the weights. Every attack
therefore runs against the whole defended model. alpha is chosen on the validation split (held out from
training), never on the test set: the largest L-inf PGD accuracy among the alphas whose clean accuracy
stays within ``max_clean_drop`` percentage points of alpha = 0, ties to the smaller alpha.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from advneurons.models.hooks import hooked
from advneurons.report.markdown import markdown_table, write_markdown
from advneurons.models.defended import MEANSPARSE as DEFENSE_TYPE
from advneurons.models.defended import MeanSparseReLU, attach, meansparse_record, set_alpha
from advneurons.attacks import AttackSpec
from advneurons.data import load_split
from advneurons.evaluation.accuracy import clean_accuracy
from advneurons.evaluation.robustness import attack_generator, robust_accuracy
from advneurons.models.checkpoint import load_model, save_model
from advneurons.models.inference import for_attacks
from advneurons.psn.scores import select_images
from advneurons.runtime import atomic_path, metadata, write_json

log = logging.getLogger("advneurons")

__all__ = ["DEFENSE_TYPE", "MeanSparseReLU", "alpha_sweep", "attach", "channel_stats", "choose_alpha",
           "meansparse_model", "set_alpha"]


@torch.no_grad()
def channel_stats(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> "OrderedDict[str, tuple[torch.Tensor, torch.Tensor]]":
    """Per ReLU: (mean, std) of each channel of its input over all images and positions (eval mode)."""
    model.eval()
    sums: dict[str, list] = {}

    def hook(name):
        def pre(_module, inputs):
            a = inputs[0].double()
            dims = [0] + list(range(2, a.dim()))
            n = a.numel() // a.shape[1]
            s1, s2 = a.sum(dims), a.pow(2).sum(dims)
            if name in sums:
                sums[name][0] += s1
                sums[name][1] += s2
                sums[name][2] += n
            else:
                sums[name] = [s1, s2, n]

        return pre

    with hooked(on_input=[(m, hook(n)) for n, m in model.relus().items()]):
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
    out = OrderedDict()
    for name in model.relus():
        s1, s2, n = sums[name]
        mean = s1 / n
        var = (s2 / n - mean.pow(2)).clamp_min(0)
        out[name] = (mean.float(), var.sqrt().float())
    return out


# ----------------------------------------------------------------------------------------- alpha
def alpha_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, alphas, attacks: dict, seed: int,
                batch_size: int = 256) -> pd.DataFrame:
    """Accuracy (fraction) clean and under each attack (name -> config entry) for every alpha; the
    attacks run against the defended model at that alpha."""
    from tqdm import tqdm

    rows = []
    for alpha in tqdm(list(alphas), desc="MeanSparse alpha"):
        set_alpha(model, alpha)
        row = {"alpha": float(alpha), "clean": clean_accuracy(model, x, y, batch_size)}
        for name, cfg in attacks.items():
            spec = AttackSpec.from_config(cfg)
            row[name] = robust_accuracy(model, x, y, spec, batch_size, attack_generator(seed))
        rows.append(row)
        log.info("alpha %g: %s", alpha, ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "alpha"))
    return pd.DataFrame(rows)


def choose_alpha(sweep: pd.DataFrame, robust_column: str, max_clean_drop: float) -> float:
    """Largest ``robust_column`` accuracy among alphas whose clean accuracy is within ``max_clean_drop``
    percentage points of the undefended (smallest) alpha's; ties go to the smaller alpha."""
    ordered = sweep.sort_values("alpha", kind="stable")
    reference = ordered["clean"].iloc[0]
    allowed = ordered[ordered["clean"] >= reference - max_clean_drop / 100.0 - 1e-12]
    best = allowed[robust_column].max()
    return float(allowed[allowed[robust_column] == best]["alpha"].iloc[0])


# ----------------------------------------------------------------------------------------- steps
def meansparse_model(model_path: Path, train_path: Path, val_path: Path, alphas, attacks: dict, select_on: str,
                     max_clean_drop: float, n_val: int | None, seed: int, out_model: Path, sweep_csv: Path,
                     sweep_md: Path, meta_path: Path, batch_size: int = 256) -> pd.DataFrame:
    """Workflow step: channel statistics on the training split, the alpha sweep on the validation split,
    the chosen alpha, and the defended checkpoint.

    ``attacks``: name -> attack config entry (1/255 units) evaluated in the sweep; ``select_on`` names the
    one whose accuracy picks alpha (normally L-inf PGD). ``n_val``: seeded validation subset (None: all).
    """

    alphas = sorted(float(a) for a in alphas)
    if not alphas or alphas[0] != 0.0:
        raise ValueError("the alpha sweep must start at 0 (the undefended model) to measure the clean-accuracy drop")
    if any(a < 0 for a in alphas):
        raise ValueError(f"alphas must be non-negative, got {alphas}")
    if select_on not in attacks:
        raise ValueError(f"alpha is selected on {select_on!r}, which is not among the sweep's attacks {sorted(attacks)}")
    model, ckpt = load_model(model_path)
    if ckpt.get("defense"):
        raise ValueError(f"{model_path} already carries a defense ({ckpt['defense'].get('type')})")
    x_train, _ = load_split(train_path)
    stats = channel_stats(model, x_train, batch_size)
    x_val, y_val = load_split(val_path)
    index = select_images(len(x_val), n_val, seed)
    x_val, y_val = x_val[index], y_val[index]
    attach(model, stats, 0.0)
    # The sweep attacks a folded copy (the same function, faster); `model` keeps its BatchNorms for the checkpoint.
    sweep = alpha_sweep(for_attacks(copy.deepcopy(model)), x_val, y_val, alphas, attacks, seed, batch_size)
    alpha = choose_alpha(sweep, select_on, max_clean_drop)
    sweep["chosen"] = sweep["alpha"] == alpha
    set_alpha(model, alpha)
    meta = metadata(
        "meansparse",
        {"model": str(model_path), "alphas": alphas, "attacks": attacks, "select_on": select_on,
         "max_clean_drop_pct": max_clean_drop, "n_val": n_val},
        seed=seed, alpha=alpha, n_val_used=len(index), base_meta=ckpt.get("meta"),
        split_used_for_alpha="val", relus_defended=list(stats),
        # an external model's ReLU modules shared by several layers cannot hold per-layer statistics; ReLUs
        # applied as functions (F.relu) have no module at all: neither is defended
        relus_not_reached=(model.unreachable_relus() if hasattr(model, "unreachable_relus") else []),
    )
    if getattr(model, "unreachable_relus", None) is not None:
        log.warning("MeanSparse could not reach the shared ReLU modules %s, nor any ReLU applied as a function",
                    model.unreachable_relus())
    save_model(model, out_model, ckpt["arch"], ckpt["dataset"], ckpt["width"], ckpt["num_classes"], meta,
               defense=meansparse_record(stats, alpha), external=ckpt.get("external"))
    with atomic_path(sweep_csv) as tmp:
        sweep.to_csv(tmp, index=False)
    shown = sweep.copy()
    for col in ["clean", *attacks]:
        shown[col] = (100 * shown[col]).round(2)
    notes = (f"Accuracy (%) on {len(index)} validation images (held out from training) of the model with "
             f"MeanSparse at each alpha; attacks run against the defended model. Chosen: alpha = {alpha:g} "
             f"(best {select_on} accuracy with clean accuracy within {max_clean_drop:g} points of alpha = 0).")
    write_markdown(sweep_md, f"# MeanSparse alpha sweep\n\n{notes}\n\n{markdown_table(shown, '.2f')}\n")
    write_json(meta, meta_path)
    return sweep
