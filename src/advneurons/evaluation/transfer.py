"""Transfer check for defenses built on a trained model (MeanSparse, IG-Defense): a gradient-masking test.

A defense that hides or randomises gradients can look robust to white-box attacks on itself while the
adversarial examples crafted on its undefended base model still fool it. The check feeds the defended model
the base model's stored pair set (the same attack, images and seed as the white-box cell of the tables) and
compares three accuracies: the base model under the white-box attack, the defended model under the white-box
(adaptive) attack, and the defended model on the transferred examples. The lower of the last two bounds the
defended model's robust accuracy from above; a gain that survives only in the white-box number is masking.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from advneurons.report.markdown import markdown_table, write_markdown
from advneurons.attacks.core import eval_mode
from advneurons.evaluation.pairs import open_pairs
from advneurons.models.checkpoint import load_model
from advneurons.models.inference import for_attacks
from advneurons.runtime import atomic_path, metadata, model_device, write_json

log = logging.getLogger(__name__)

COLUMNS = ("model", "base", "attack", "description", "n_transfer", "base_clean", "base_whitebox",
           "defended_clean", "defended_whitebox", "defended_transfer", "n_whitebox", "upper_bound",
           "whitebox_gain", "bounded_gain", "transfer_correct_by_image")
# transfer_correct_by_image: per image of the pair set, "y" where the defended model classifies the transferred
# example correctly ("n" where not) (the paired test of the transfer claim combines it with the white-box records).


def predictions(model: torch.nn.Module, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Labels `model` predicts for float images in [0, 1] (N, 3, H, W), `batch_size` at a time, eval mode."""

    dev = model_device(model)
    out = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.array(images[start : start + batch_size])).to(dev)
            out.append(model(x).argmax(dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _whitebox(records_csv: Path, attack: str) -> tuple[float, int, str]:
    """(accuracy, n_images, description) of one attack in an evaluate_attack records file."""
    records = pd.read_csv(records_csv)
    rows = records[records.attack == attack]
    if len(rows) != 1:
        raise ValueError(f"{records_csv} has {len(rows)} records of attack {attack!r}, expected one")
    row = rows.iloc[0]
    return float(row.accuracy), int(row.n_images), str(row.description)


def transfer_row(defended: torch.nn.Module, pairs, defended_whitebox: float, base_whitebox: float, n_whitebox: int,
                 model_name: str, base_name: str, attack: str, description: str, batch_size: int = 256) -> dict:
    """One row (COLUMNS) from the base model's pair set and the two white-box accuracies (fractions)."""
    if len(pairs) == 0:
        raise ValueError(f"the pair set of {base_name} under {attack} is empty: nothing to transfer")
    labels = np.asarray(pairs.label)
    defended_clean = float((predictions(defended, pairs.clean, batch_size) == labels).mean())
    transfer_correct = predictions(defended, pairs.perturbed, batch_size) == labels
    defended_transfer = float(transfer_correct.mean())
    base_clean, base_on_pairs = pairs.accuracy()
    if abs(base_on_pairs - base_whitebox) > 1e-9 and len(pairs) == n_whitebox:
        # Same attack, seed and images: the pair set must reproduce the base model's table cell.
        log.warning("%s: accuracy on its stored %s pair set %.4f differs from its table cell %.4f", base_name,
                    attack, base_on_pairs, base_whitebox)
    bound = min(defended_whitebox, defended_transfer)
    return {"model": model_name, "base": base_name, "attack": attack,
            "description": f"{description}; crafted on {base_name}", "n_transfer": len(pairs),
            "base_clean": base_clean, "base_whitebox": base_whitebox, "defended_clean": defended_clean,
            "defended_whitebox": defended_whitebox, "defended_transfer": defended_transfer, "n_whitebox": n_whitebox,
            "upper_bound": bound, "whitebox_gain": defended_whitebox - base_whitebox,
            "bounded_gain": bound - base_whitebox,
            "transfer_correct_by_image": "".join("y" if c else "n" for c in transfer_correct)}


def transfer_check(model_path: Path, pairs_path: Path, whitebox_csv: Path, base_whitebox_csv: Path, attack: str,
                   model_name: str, base_name: str, seed: int, batch_size: int, out_csv: Path,
                   meta_path: Path) -> pd.DataFrame:
    """Workflow step: the transfer row of one defended model under one attack (`attack` is the attack's
    name in the records files). Writes a one-row CSV (COLUMNS, accuracies as fractions) and metadata."""

    # Cheap reads first: a missing record or a broken pair set fails before the model is loaded.
    defended_wb, n_wb, description = _whitebox(whitebox_csv, attack)
    base_wb, n_base, _ = _whitebox(base_whitebox_csv, attack)
    if n_base != n_wb:
        raise ValueError(f"white-box cells on different image counts: {whitebox_csv} ({n_wb}) vs "
                         f"{base_whitebox_csv} ({n_base})")
    pairs = open_pairs(pairs_path)
    model, _ = load_model(model_path)
    for_attacks(model)
    row = transfer_row(model, pairs, defended_wb, base_wb, n_wb, model_name, base_name, attack, description,
                       batch_size)
    log.info("%s vs %s under %s: white-box %.4f, transferred %.4f, base %.4f", model_name, base_name, attack,
             row["defended_whitebox"], row["defended_transfer"], row["base_whitebox"])
    frame = pd.DataFrame([row], columns=list(COLUMNS))
    with atomic_path(out_csv) as tmp:
        frame.to_csv(tmp, index=False)
    write_json(metadata("transfer_check", {"model": str(model_path), "pairs": str(pairs_path), "attack": attack,
                                           "batch_size": batch_size}, seed=seed, row=row), meta_path)
    return frame


def transfer_table(row_csvs: list[Path], labels: dict[str, str], out_csv: Path, out_md: Path) -> pd.DataFrame:
    """Workflow step: every transfer row in one table (`labels`: attack name -> table column label, e.g.
    pgd -> L-inf PGD). CSV keeps fractions; the Markdown shows percentages."""

    if not row_csvs:
        raise ValueError("no transfer rows to gather")
    frame = pd.concat([pd.read_csv(p) for p in row_csvs], ignore_index=True)
    frame.insert(3, "column", frame.attack.map(lambda a: labels.get(a, a)))
    with atomic_path(out_csv) as tmp:
        frame.to_csv(tmp, index=False)
    shown = frame.drop(columns=["description", "transfer_correct_by_image"]).copy()
    pct = [c for c in COLUMNS if c not in ("model", "base", "attack", "description", "n_transfer", "n_whitebox",
                                           "transfer_correct_by_image")]
    shown[pct] = (100 * shown[pct]).round(1)
    notes = ("Accuracy (%) of each defended model and its undefended base model. *white-box*: the attack run on the "
             "model itself (adaptive, through the expected logits, for a randomised defense); *transfer*: the base "
             "model's adversarial examples (its stored pair set: same attack, images and seed) fed to the defended "
             "model. *upper_bound* = min(white-box, transfer) bounds the defended model's robust accuracy from above; "
             "a white-box gain that disappears in *bounded_gain* is gradient masking, not robustness.\n\n"
             + "\n".join(f"- {r.model}: {r.description}" for r in frame.itertuples()))
    write_markdown(out_md, f"# Transfer check of the defenses\n\n{notes}\n\n{markdown_table(shown, '.1f')}\n")
    return frame
