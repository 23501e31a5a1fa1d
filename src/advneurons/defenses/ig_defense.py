"""IG-Defense (docs/methods.md, defenses; Kulkarni & Weng, ECCV 2024): a test-time defense guided by neuron importance.

LO-IR ranking. For every channel u of the penultimate representation (the globally pooled last block of
ResNet18; VGG16's pool5, 1x1 at 32x32) and every class c, the importance is the mean |change of the
ground-truth logit| when channel u is zeroed, over the training images of class c. Our heads are one
linear layer on that representation, so zeroing u changes logit c by exactly -W[c, u] f_u(x): the
leave-one-out ranking is |W[c, u] f_u(x)| averaged per class, computed in one pass (a test checks it
against zeroing each channel). The mask M[c, u] = 1 for the top-k channels of class c.

Defense. Pass 1 classifies x + N(0, sigma^2) and gives p = softmax(T * logits) (T = 100: nearly one-hot);
pass 2 classifies the clean x with the pooled features multiplied by p @ M, i.e. only the channels that
matter for the (soft-)predicted class reach the head. The defended model is an ordinary checkpoint whose
``defense`` record rebuilds :class:`IGDefense` around the base model.

Adaptive evaluation. The defense is randomised, so attacks on it see its expected logits over
``eot_samples`` noise draws (:meth:`IGDefense.expected_logits`; attack gradients are averaged over the
noise through those logits). The head is linear in the mask, so the expectation needs ``eot_samples``
pass-1 forwards and one pass 2. Accuracy is measured on the randomised defense itself, one draw per image.

Analysis (the paper's Fig. 2). For adversarial examples crafted against the undefended model, the
relative change of the pooled activations, (sum over a group of f(x') - sum of f(x)) / sum of f(x), of
four channel groups: top-k of the true class, top-k of the adversarial (predicted) class, the other
classes' top-k channels (not in the first two), and channels in no class's top-k.
"""

from __future__ import annotations

import logging
import math
import textwrap
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from advneurons.report.figures import plotting, save_figure
from advneurons.report.markdown import markdown_table, write_markdown
from advneurons.models.defended import IG_DEFENSE as DEFENSE_TYPE
from advneurons.models.defended import IGDefense, linear_head, ig_defense_record, penultimate
from advneurons.attacks import AttackSpec, run_attack
from advneurons.data import load_split
from advneurons.evaluation.accuracy import clean_accuracy
from advneurons.evaluation.pairs import select_subset
from advneurons.evaluation.robustness import attack_generator
from advneurons.models.checkpoint import load_model, save_model
from advneurons.runtime import atomic_path, metadata, write_json

log = logging.getLogger("advneurons")

__all__ = ["DEFENSE_TYPE", "GROUPS", "IGDefense", "ig_defense_analysis", "class_mask", "group_change",
           "ig_defense_model", "lo_ir_importance", "penultimate", "top_k_count"]
GROUPS = ("true-class top-k", "adversarial-class top-k", "other classes' top-k", "in no top-k")


# ---------------------------------------------------------------------------------------- features
@torch.no_grad()
def features_of(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([penultimate(model, x[i : i + batch_size])[0] for i in range(0, len(x), batch_size)])


# ---------------------------------------------------------------------------------------- ranking
@torch.no_grad()
def lo_ir_importance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(classes, channels): mean |change of the true-class logit| when each channel is zeroed, per class.

    Exact for a linear head on the pooled features: |W[c, u] * f_u(x)| averaged over class-c images.
    A class without training images is an error (its ranking would be undefined).
    """
    weight = linear_head(model).weight.detach().double()  # (classes, channels)
    num_classes = weight.shape[0]
    sums = torch.zeros_like(weight)
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for start in tqdm(range(0, len(x), batch_size), desc="LO-IR ranking", mininterval=5.0):
        f = features_of(model, x[start : start + batch_size], batch_size).double()
        yb = y[start : start + batch_size]
        sums.index_add_(0, yb, (weight[yb] * f).abs())
        counts += torch.bincount(yb, minlength=num_classes).double()
    empty = [c for c in range(num_classes) if counts[c] == 0]
    if empty:
        raise ValueError(f"no training images of class(es) {empty}: their LO-IR ranking is undefined")
    return (sums / counts[:, None]).float()


def top_k_count(channels: int, top_percent: float) -> int:
    """Channels kept per class: ceil(top_percent% of the channels), at least 1 (the reference: 50 of 512)."""
    if not 0 < top_percent <= 100:
        raise ValueError(f"top_percent must be in (0, 100], got {top_percent}")
    return max(1, math.ceil(channels * top_percent / 100.0 - 1e-9))


def class_mask(importance: torch.Tensor, k: int) -> torch.Tensor:
    """(classes, channels) 0/1 mask of each class's k most important channels (ties: lower index)."""
    if not 1 <= k <= importance.shape[1]:
        raise ValueError(f"k must be in [1, {importance.shape[1]}], got {k}")
    order = torch.sort(importance, dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros_like(importance)
    mask.scatter_(1, order, 1.0)
    return mask


# ---------------------------------------------------------------------------------------- analysis
def group_change(clean: torch.Tensor, adv: torch.Tensor, y: torch.Tensor, adv_pred: torch.Tensor,
                 mask: torch.Tensor) -> pd.DataFrame:
    """Per image and group: channel count and relative change (sum f(x') - sum f(x)) / sum f(x) of the
    pooled activations (NaN for an empty group or a zero clean sum). Also the true/adversarial top-k overlap."""
    top = mask.bool()
    anywhere = top.any(0)
    rows = []
    columns = ["image", "label", "adv_pred", "group", "channels", "overlap", "relative_change"]
    for i in range(len(y)):
        true_k, adv_k = top[y[i]], top[adv_pred[i]]
        others = anywhere & ~true_k & ~adv_k
        groups = {GROUPS[0]: true_k, GROUPS[1]: adv_k, GROUPS[2]: others, GROUPS[3]: ~anywhere}
        for name, members in groups.items():
            before, after = float(clean[i, members].sum()), float(adv[i, members].sum())
            change = (after - before) / before if members.any() and before > 0 else float("nan")
            rows.append({"image": i, "label": int(y[i]), "adv_pred": int(adv_pred[i]), "group": name,
                         "channels": int(members.sum()), "overlap": int((true_k & adv_k).sum()),
                         "relative_change": change})
    return pd.DataFrame(rows, columns=columns)


def summarise_changes(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per group (all four, in order): images with a defined change, mean channel count, mean, median and
    std of the relative change."""
    per_image = per_image.astype({"channels": float, "relative_change": float})
    grouped = per_image.groupby(pd.Categorical(per_image["group"], GROUPS), observed=False)
    summary = grouped.agg(images=("relative_change", "count"), channels_mean=("channels", "mean"),
                          mean_change=("relative_change", "mean"), median_change=("relative_change", "median"),
                          std_change=("relative_change", "std"))
    summary.index = summary.index.astype(str)
    return summary.rename_axis("group").reset_index()


# ---------------------------------------------------------------------------------------- steps
def ig_defense_model(model_path: Path, train_path: Path, val_path: Path, top_percent: float, noise_std_255: float,
                     temperature: float, eot_samples: int, n_train: int | None, seed: int, out_model: Path,
                     ranking_csv: Path, meta_path: Path, batch_size: int = 256) -> IGDefense:
    """Workflow step: LO-IR ranking on (a seeded subset of) the training split, the class-wise mask, and the
    defended checkpoint; the ranking CSV has one row per class and channel (importance, rank, in mask)."""

    model, ckpt = load_model(model_path)
    if ckpt.get("defense"):
        raise ValueError(f"{model_path} already carries a defense ({ckpt['defense'].get('type')})")
    x_train, y_train = load_split(train_path)
    index = torch.from_numpy(select_subset(len(y_train), n_train, seed))
    importance = lo_ir_importance(model, x_train[index], y_train[index], batch_size)
    k = top_k_count(importance.shape[1], top_percent)
    mask = class_mask(importance, k)
    defended = IGDefense(model, mask, noise_std_255 / 255.0, temperature, eot_samples)
    x_val, y_val = load_split(val_path)
    base_val, defended_val = clean_accuracy(model, x_val, y_val, batch_size), clean_accuracy(defended, x_val, y_val, batch_size)
    log.info("IG-Defense: k=%d of %d channels per class; validation clean accuracy %.4f -> %.4f",
             k, importance.shape[1], base_val, defended_val)
    ranks = torch.argsort(torch.argsort(importance, dim=1, descending=True, stable=True), dim=1) + 1
    ranking = pd.DataFrame({
        "class": torch.arange(importance.shape[0]).repeat_interleave(importance.shape[1]).numpy(),
        "channel": torch.arange(importance.shape[1]).repeat(importance.shape[0]).numpy(),
        "importance": importance.flatten().numpy(), "rank": ranks.flatten().numpy(),
        "in_mask": mask.flatten().bool().numpy(),
    })
    with atomic_path(ranking_csv) as tmp:
        ranking.to_csv(tmp, index=False)
    meta = metadata(
        "ig_defense",
        {"model": str(model_path), "top_percent": top_percent, "noise_std_255": noise_std_255,
         "temperature": temperature, "eot_samples": eot_samples, "n_train": n_train},
        seed=seed, k=k, channels=int(importance.shape[1]), n_train_used=len(index), base_meta=ckpt.get("meta"),
        val_clean_accuracy={"base": base_val, "defended": defended_val},
        distinct_channels_in_any_mask=int(mask.any(0).sum()),
    )
    save_model(defended, out_model, ckpt["arch"], ckpt["dataset"], ckpt["width"], ckpt["num_classes"], meta,
               defense=ig_defense_record(mask, noise_std_255 / 255.0, temperature, eot_samples),
               external=ckpt.get("external"))
    write_json(meta, meta_path)
    return defended


def ig_defense_analysis(model_path: Path, test_path: Path, attack: dict, n_images: int | None, seed: int,
                        per_image_csv: Path, summary_csv: Path, summary_md: Path, figure_png: Path,
                        meta_path: Path, model_name: str, batch_size: int = 256) -> pd.DataFrame:
    """Workflow step (the paper's Fig. 2): adversarial examples crafted against the undefended model, and the
    relative change of the pooled activations of the four channel groups of an IG-Defense checkpoint's mask,
    over the successfully attacked images. Writes per-image rows, a summary (CSV + Markdown) and a figure."""

    spec = AttackSpec.from_config(attack)
    defended, ckpt = load_model(model_path)
    if not isinstance(defended, IGDefense):
        raise ValueError(f"{model_path} is not an IG-Defense checkpoint")
    base = defended.model
    images, labels = load_split(test_path)
    index = torch.from_numpy(select_subset(len(labels), n_images, seed))
    images, labels = images[index], labels[index]
    gen = attack_generator(seed)
    clean_f, adv_f, adv_pred, keep, restored = [], [], [], [], 0
    for start in tqdm(range(0, len(labels), batch_size), desc="IG-Defense analysis", mininterval=5.0):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        x_adv = run_attack(spec, base, x, y, generator=gen)
        with torch.no_grad():
            f, logits = penultimate(base, x)
            f_adv, logits_adv = penultimate(base, x_adv)
            fooled = (logits.argmax(1) == y) & (logits_adv.argmax(1) != y)
            if fooled.any():
                restored += int((defended(x_adv[fooled]).argmax(1) == y[fooled]).sum())
        clean_f.append(f), adv_f.append(f_adv), adv_pred.append(logits_adv.argmax(1)), keep.append(fooled)
    keep_all = torch.cat(keep)
    if not keep_all.any():  # e.g. a robust or an untrained model: empty results that say so, not a failed run
        log.warning("%s fooled none of the %d images: nothing to analyse", spec.describe(), len(labels))
    per_image = group_change(torch.cat(clean_f)[keep_all], torch.cat(adv_f)[keep_all], labels[keep_all],
                             torch.cat(adv_pred)[keep_all], defended.mask)
    per_image.insert(0, "model", model_name)
    summary = summarise_changes(per_image)
    summary.insert(0, "model", model_name)
    with atomic_path(per_image_csv) as tmp:
        per_image.to_csv(tmp, index=False)
    with atomic_path(summary_csv) as tmp:
        summary.to_csv(tmp, index=False)
    n_fooled = int(keep_all.sum())
    k = int(defended.mask.sum(1).max())
    notes = (f"{model_name}: {spec.describe()} against the undefended model on {len(labels)} test images; "
             f"{n_fooled} fooled it and are analysed. Relative change of the summed pooled activations of each "
             f"channel group (k = {k} of {defended.mask.shape[1]} channels per class). IG-Defense classifies "
             f"{restored} of these {n_fooled} adversarial examples correctly (one noise draw each).")
    shown = summary.copy()
    for col in ("mean_change", "median_change", "std_change"):
        shown[col] = (100 * shown[col]).round(2)
    write_markdown(summary_md, "# IG-Defense analysis: relative activation change (%) by channel group\n\n"
                   f"{notes}\n\n{markdown_table(shown, '.2f')}\n")
    save_figure(activation_change_figure(per_image, model_name, spec.describe()), figure_png)
    write_json(metadata("ig_defense_analysis", {"model": str(model_path), "attack": attack, "n_images": n_images},
                        seed=seed, n_attacked=len(labels), n_fooled=n_fooled, restored_by_defense=restored, k=k),
               meta_path)
    return summary


def activation_change_figure(per_image: pd.DataFrame, model_name: str, attack: str):
    """The paper's Fig. 2: mean relative change (%) of each channel group's pooled activations over the fooled
    images, with 95% bootstrap intervals over those images (seeded, so reruns draw the same bars)."""
    plt, sns = plotting()
    data = per_image.dropna(subset=["relative_change"]).assign(change_pct=lambda d: 100 * d.relative_change)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if data.empty:
        ax.text(0.5, 0.5, "the attack fooled no image: nothing to compare", ha="center", va="center")
    else:
        sns.barplot(data=data, x="group", y="change_pct", order=[g for g in GROUPS if g in set(data.group)],
                    errorbar=("ci", 95), seed=0, ax=ax, color="tab:blue")
    n_images = per_image["image"].nunique() if "image" in per_image.columns else len(data)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("channel group of the IG-Defense mask")
    ax.set_ylabel("relative activation change (%)")
    ax.set_title(f"{model_name}: pooled activations, adversarial vs clean ({attack})\n"
                 f"bars: mean over {n_images} fooled images; error bars: 95% bootstrap CI over images",
                 fontsize="medium")
    ax.set_xticks(ax.get_xticks(), [textwrap.fill(t.get_text(), 14) for t in ax.get_xticklabels()],
                  fontsize="small")
    return fig
