"""Robust accuracy under any configured attack, and the papers' table and sweep-figure layouts.

Workflow steps (each takes file paths and plain parameters and writes its outputs):

* `evaluate_attack`: one model, clean accuracy plus accuracy under each named attack, on one seeded
  subset of the test split -> a records CSV (one row per attack) and a metadata JSON.
* `robustness_table`: records CSVs of several models -> a table in the TIP Table III or Table I shape (or
  custom columns), as CSV and Markdown, plus a settings table that traces every cell to its attack, eps,
  steps and number of images.
* `pgd_sweep`: one model, L-inf PGD accuracy over k (fixed eps) and over eps (fixed k) -> CSV.
* `sweep_figures`: sweep CSVs of several models -> one combined CSV and two seaborn line figures, PNG + PDF
  (accuracy vs k, accuracy vs eps; one line per model), as in TIP Fig 15.

Accuracies are fractions in records and percentages in tables. Budgets are in 1/255 units everywhere
outside the package's internals, as in the config.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from advneurons.evaluation.accuracy import _correct, _on_model_device, clean_correct
from advneurons.io import write_csv, write_table
from advneurons.attacks import AttackSpec, run_attack, AutoAttackLog, adaptive_note, attack_target, eval_mode
from advneurons.report.figures import plotting, save_figure
from advneurons.report.markdown import interval_text
from advneurons.runtime import autocast, check_precision, fast_batch, generator
from advneurons.data import load_split
from advneurons.evaluation.paired_stats import wilson_interval
from advneurons.evaluation.pairs import select_subset
from advneurons.evaluation.record_files import record_sidecars
from advneurons.models.checkpoint import file_digest, load_model
from advneurons.models.inference import FOLDED, for_attacks
from advneurons.runtime import metadata, write_json

log = logging.getLogger(__name__)

CLEAN = "clean"
RECORD_COLUMNS = (
    "model", "attack", "attack_type", "threat", "eps_255", "steps", "step_size_255", "description", "config",
    "n_images", "accuracy", "correct_by_image", "attack_log",
)
# attack_log: what the attack itself reported, as JSON (AutoAttack: the robust accuracy after each stage and the
# warnings of its checks, attacks.AutoAttackLog.to_dict); empty for other attacks.
# correct_by_image: one character per evaluated image, in the order of the seeded test subset, "y" where the
# model still classifies the image correctly, "n" where not (letters, so that no CSV reader takes it for a number). Models evaluated with the same subset size and seed see the same
# images, so two records can be compared image by image (paired tests in the claims).
# TIP Table III: column label -> attack type that fills it.
TABLE_III_TYPES = {
    "C&W": "cw_l2",
    "L2 PGD": "pgd_l2",
    "L-inf PGD": "pgd",
    "FGSM": "fgsm",
    "SPSA": "spsa",
    "NAttack": "nattack",
    "AutoAttack": "autoattack",  # not in the paper's table; the standard reference evaluation today
    "Step-LL": "step_ll",  # ECCV Tables 1-2
    "MI-FGSM": "mifgsm",  # ECCV Tables 1-2
}
LAYOUTS = ("table_iii", "table_i")
SWEEP_COLUMNS = ("model", "sweep", "eps_255", "steps", "step_size_255", "n_images", "accuracy")


class TableError(ValueError):
    """Records cannot be laid out as asked; the message says which model, attack or column is at fault."""


# --------------------------------------------------------------------------------------------- accuracy
def encode_correct(correct: torch.Tensor) -> str:
    """Per-image correctness as a string of y/n (the records' correct_by_image column)."""
    return "".join("y" if c else "n" for c in correct.tolist())


def decode_correct(text) -> "np.ndarray":
    """The inverse of :func:`encode_correct` (an empty array for a record without per-image results)."""
    import numpy as np

    if not isinstance(text, str):  # NaN: no per-image results in this record
        return np.zeros(0, dtype=bool)
    if set(text) - {"y", "n"}:
        raise ValueError(f"per-image results must be a string of y/n, got {text[:20]!r}...")
    return np.frombuffer(text.encode(), dtype=np.uint8) == ord("y")


def robust_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: AttackSpec,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> float:
    """Fraction of images still classified correctly after `spec` perturbs them (nothing is stored).

    It is the accuracy on the perturbed images, as the papers' tables count it: an attack that does not only push
    away from the label (Step-LL aims at the least-likely class; a random start lands anywhere) can turn an image
    the model gets wrong into one it gets right, which then counts (in the default run of 2026-12-03, 17 of 119
    cells by 1-10 images, at most 2.8 points: Step-LL on SNS-sen). The WORST_CASE column of the tables counts an
    image only if it is also right unperturbed, as AutoAttack and RobustBench count robust accuracy.
    """
    correct = robust_correct(model, images, labels, spec, batch_size, generator, progress)
    return float(correct.sum()) / max(1, len(labels))


@dataclass
class ImageResults:
    """What an attack did to each image (CPU tensors, one entry per image): still `correct` afterwards, the
    perturbation's L-inf and L2 norms in 1/255 units, and the model queries a score-based black-box attack
    spent on it (-1 where the attack does not count queries)."""

    correct: torch.Tensor
    linf_255: torch.Tensor
    l2_255: torch.Tensor
    queries: torch.Tensor


def robust_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, spec: AttackSpec, *args,
                   **kwargs) -> torch.Tensor:
    """Per image: is it still classified correctly after `spec` perturbs it? (bool tensor, CPU; the arguments
    of :func:`attack_images`)"""
    return attack_images(model, images, labels, spec, *args, **kwargs).correct


def attack_images(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: AttackSpec,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    progress: bool = False,
    autoattack_log=None,
    precision: str = "fp32",
) -> ImageResults:
    """What `spec` does to each image (:class:`ImageResults`: still correct, perturbation norms, queries); a few
    bytes per image, computed from tensors the attack produces anyway. `autoattack_log` (attacks.AutoAttackLog)
    collects AutoAttack's own report over the batches; `precision` "bf16" runs the attack under bfloat16 autocast
    (runtime.autocast), the final check in fp32."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    correct, linf, l2, queries = [], [], [], []
    target = attack_target(model)  # a randomised defense is attacked through its expected logits (EOT)
    starts = range(0, len(labels), batch_size)
    for start in tqdm(starts, desc=spec.describe(), disable=not progress, leave=False, mininterval=5.0):
        x, y = _on_model_device(model, images[start : start + batch_size], labels[start : start + batch_size])
        x = fast_batch(x, model)
        counted = torch.zeros(len(y), dtype=torch.int64) if spec.black_box else None
        # the generator stays on the CPU: same draws anywhere
        with autocast(precision, x.device):
            x_adv = run_attack(spec, target, x, y, generator=generator, autoattack_log=autoattack_log,
                               query_counts=counted)
        x_adv = x_adv.float()
        with eval_mode(model):
            correct.append(_correct(model, x_adv, y))
        delta = (x_adv - x.float()).flatten(1).cpu()
        linf.append(delta.abs().amax(1) * 255.0)
        l2.append(delta.norm(dim=1) * 255.0)
        queries.append(counted if counted is not None else torch.full((len(y),), -1, dtype=torch.int64))
    if not correct:
        empty = torch.zeros(0)
        return ImageResults(torch.zeros(0, dtype=torch.bool), empty, empty, torch.zeros(0, dtype=torch.int64))
    return ImageResults(torch.cat(correct), torch.cat(linf), torch.cat(l2), torch.cat(queries))


IMAGE_COLUMNS = ("model", "attack", "index", "clean_correct", "correct", "linf_255", "l2_255", "queries")
# One row per evaluated image and attack (the evaluation job's per-image records): `index` is the image's
# position in the test split, `clean_correct` / `correct` are 0/1 before / under the attack, the norms are those
# of the perturbation actually applied (1/255 units), `queries` the model queries of a score-based black-box
# attack (-1: not counted). Clean rows have attack "clean", zero norms and correct == clean_correct.


def image_frame(model: str, attack: str, index, clean: torch.Tensor, results: ImageResults) -> pd.DataFrame:
    """The per-image records (IMAGE_COLUMNS) of one attack; compact dtypes keep them a few bytes per image."""
    n = len(results.correct)
    if not len(index) == len(clean) == n:
        raise ValueError("per-image records need one index and clean result per image: "
                         f"{len(index)}, {len(clean)}, {n}")
    return pd.DataFrame({
        "model": model, "attack": attack, "index": np.asarray(index, dtype=np.int64),
        "clean_correct": clean.numpy().astype(np.int8), "correct": results.correct.numpy().astype(np.int8),
        "linf_255": results.linf_255.numpy().astype(np.float32).round(3),
        "l2_255": results.l2_255.numpy().astype(np.float32).round(3),
        "queries": results.queries.numpy().astype(np.int64),
    }, columns=list(IMAGE_COLUMNS))


def read_images(paths: list[Path]) -> pd.DataFrame:
    """Per-image records (IMAGE_COLUMNS) of several evaluation jobs in one frame; a file that is not one is an
    error naming it. Clean rows repeated by several jobs of a model collapse."""
    frames = []
    for path in paths:
        frame = pd.read_csv(path)
        missing = [c for c in IMAGE_COLUMNS if c not in frame.columns]
        if missing:
            raise TableError(f"{path} is not a per-image records file: missing columns {', '.join(missing)}")
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(IMAGE_COLUMNS))
    return pd.concat(frames, ignore_index=True).drop_duplicates(["model", "attack", "index"], ignore_index=True)


def attack_generator(seed: int) -> torch.Generator:
    """The generator an attack draws from: the same offset as pair generation, so that the accuracy of a
    stored pair set and `robust_accuracy` agree for the same attack, seed and images."""
    return generator(seed + 7919)


def accuracy_record(
    model: str, attack: str, settings: dict | AttackSpec | None, n_images: int, accuracy: float,
    correct: torch.Tensor | None = None, attack_log: dict | None = None,
) -> dict:
    """One record (RECORD_COLUMNS): `settings` is the attack's config entry (1/255 units) or AttackSpec;
    None (with attack 'clean') is the unattacked accuracy. `accuracy` is a fraction; `correct`, when given,
    the per-image results behind it."""
    if settings is None:
        if attack != CLEAN:
            raise ValueError(f"attack {attack!r} needs its settings; only '{CLEAN}' has none")
        described = {"attack_type": CLEAN, "threat": "none", "eps_255": 0.0, "steps": None,
                     "step_size_255": None, "description": "no attack", "config": "{}"}
    else:
        spec = settings if isinstance(settings, AttackSpec) else AttackSpec.from_config(settings)
        # The full config entry (1/255 units) makes every record reproducible on its own.
        described = {**spec.settings(), "config": json.dumps(spec.to_config(), sort_keys=True)}
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy is a fraction in [0, 1], got {accuracy}")
    if correct is not None and (len(correct) != n_images or abs(int(correct.sum()) - accuracy * n_images) > 0.01):
        raise ValueError(f"per-image results ({len(correct)} images) do not match n_images={n_images}, "
                         f"accuracy={accuracy}")
    return {"model": model, "attack": attack, **described, "n_images": int(n_images), "accuracy": float(accuracy),
            "correct_by_image": encode_correct(correct) if correct is not None else None,
            "attack_log": json.dumps(attack_log) if attack_log else ""}  # stage order kept


def records_frame(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(records, columns=list(RECORD_COLUMNS))


def evaluate_model(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attacks: dict[str, dict],
    model_name: str,
    seed: int,
    batch_size: int = 256,
    precision: str = "fp32",
    index=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(records, per-image records): records (RECORD_COLUMNS) of the clean accuracy and the accuracy under each
    attack (name -> config entry), and the per-image records behind them (IMAGE_COLUMNS; `index`: each image's
    position in the test split, default 0..n-1).

    Every attack gets a fresh generator from `seed`, so one attack's result does not depend on which
    other attacks run before it. `precision`: of the attacks (:func:`robust_correct`).
    """
    specs = {name: AttackSpec.from_config(cfg) for name, cfg in attacks.items()}  # fail before any work
    if CLEAN in specs:
        raise ValueError(f"'{CLEAN}' is reserved for the unattacked accuracy; rename that attack")
    n = len(labels)
    index = np.arange(n) if index is None else np.asarray(index)
    clean = clean_correct(model, images, labels, batch_size)
    rows = [accuracy_record(model_name, CLEAN, None, n, float(clean.sum()) / max(1, n), clean)]
    zeros = torch.zeros(n)
    per_image = [image_frame(model_name, CLEAN, index, clean,
                             ImageResults(clean, zeros, zeros, torch.full((n,), -1, dtype=torch.int64)))]
    for name, spec in specs.items():
        aa_log = AutoAttackLog() if spec.type == "autoattack" else None
        results = attack_images(model, images, labels, spec, batch_size, attack_generator(seed), progress=True,
                                autoattack_log=aa_log, precision=precision)
        correct = results.correct
        acc = float(correct.sum()) / max(1, n)
        log.info("%s / %s: %.4f (%s)", model_name, name, acc, spec.describe())
        report = aa_log.to_dict() if aa_log is not None else None
        for message in (report or {}).get("warnings", []):
            log.warning("%s / %s: AutoAttack warns: %s", model_name, name, message)
        rows.append(accuracy_record(model_name, name, spec, n, acc, correct, report))
        per_image.append(image_frame(model_name, name, index, clean, results))
    frame = records_frame(rows)
    note = adaptive_note(model)
    if note:  # the table's settings say how a randomised defense was attacked
        attacked = frame.attack != CLEAN
        frame.loc[attacked, "description"] = frame.loc[attacked, "description"] + f"; {note}"
    return frame, pd.concat(per_image, ignore_index=True)


def _load_subset(model_path: Path, test_path: Path, n_images: int | None, seed: int):
    model, ckpt = load_model(model_path)
    for_attacks(model)
    images, labels = load_split(test_path)
    index = select_subset(len(labels), n_images, seed)
    chosen = torch.from_numpy(index)
    return model, ckpt, images[chosen], labels[chosen], index


def evaluate_attack(
    model_path: Path,
    test_path: Path,
    attacks: dict[str, dict],
    model_name: str,
    n_images: int | None,
    seed: int,
    batch_size: int,
    out_csv: Path,
    meta_path: Path,
    precision: str = "fp32",
    images_csv: Path | None = None,
    code: str | None = None,
    log_path: Path | None = None,
) -> pd.DataFrame:
    """Workflow step: clean and robust accuracy of one model under each attack (name -> config entry,
    1/255 units) on a seeded subset of `n_images` test images (None: all). Writes the records CSV
    (RECORD_COLUMNS), the per-image records (IMAGE_COLUMNS; `images_csv`, gzip by its suffix) and a metadata
    JSON; returns the records. `precision` "bf16": the attacks under bfloat16 autocast (opt-in, for GPUs).
    The metadata keeps the lineage of every number: the checkpoint's sha256, `code` (the rule's code
    fingerprint), versions, device, seed and `log_path` (the job's log)."""
    check_precision(precision)

    for name, cfg in attacks.items():
        try:
            AttackSpec.from_config(cfg)
        except ValueError as exc:
            raise ValueError(f"attack {name!r}: {exc}") from exc
    model, ckpt, images, labels, index = _load_subset(model_path, test_path, n_images, seed)
    records, per_image = evaluate_model(model, images, labels, attacks, model_name, seed, batch_size, precision,
                                        index=index)
    write_csv(records, out_csv)
    if images_csv is not None:
        write_csv(per_image, images_csv)
    meta = metadata(
        "evaluate_attack",
        {"attacks": attacks, "model_name": model_name, "n_images": n_images, "batch_size": batch_size,
         "model": str(model_path), "test": str(test_path), "precision": precision},
        seed=seed,
        accuracy={row.attack: row.accuracy for row in records.itertuples()},
        descriptions={row.attack: row.description for row in records.itertuples()},
        model_meta=ckpt.get("meta", {}).get("params"),
        batchnorm_folded=getattr(model, FOLDED, 0),
        lineage={"checkpoint_sha256": file_digest(model_path), "code": code,
                 "log": str(log_path) if log_path is not None else None},
    )
    write_json(meta, meta_path)
    return records


# ------------------------------------------------------------------------------------------------ tables
def read_records(paths: list[Path]) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in paths]
    for path, frame in zip(paths, frames):
        missing = [c for c in RECORD_COLUMNS if c not in frame.columns]
        if missing:
            raise TableError(f"{path} is not a robustness records file: missing columns {', '.join(missing)}")
    records = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RECORD_COLUMNS))
    # Files written per (model, attack) each repeat the model's clean record: identical copies collapse.
    records = records.drop_duplicates(ignore_index=True)
    # Slow attacks run on smaller subsets, whose clean records differ: the table's Clean column is the
    # clean accuracy on the largest subset evaluated.
    clean = records[records.attack == CLEAN].sort_values("n_images", ascending=False, kind="stable")
    records = pd.concat([records[records.attack != CLEAN], clean.drop_duplicates("model")], ignore_index=True)
    dup = records[records.duplicated(["model", "attack"], keep=False)]
    if len(dup):
        pairs = sorted(set(zip(dup.model, dup.attack)))
        raise TableError(f"conflicting records for (model, attack): {pairs[:5]}")
    return records


LINEAGE_COLUMNS = ("settings_id", "checkpoint_sha256", "code", "seed", "device", "versions", "log", "record_file")


def record_lineage(record_csv: Path) -> dict | None:
    """What produced the records of one evaluation job (LINEAGE_COLUMNS), from the metadata JSON beside it; None
    when there is none."""
    path = Path(record_csv)
    meta_path = record_sidecars(path)[1]
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    own = meta.get("lineage", {})
    versions = dict(meta.get("versions", {}))
    device_name = versions.pop("device", "")
    return {
        "settings_id": path.stem, "checkpoint_sha256": own.get("checkpoint_sha256", ""),
        "code": own.get("code") or "", "seed": meta.get("seed"), "device": device_name,
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()
                              if k not in ("platform", "cpu", "cpu_capability", "threads")),
        "log": own.get("log") or "", "record_file": str(path),
    }


def read_lineage(record_csvs: list[Path]) -> dict[tuple[str, str], dict]:
    """(model, attack) -> what produced that record (LINEAGE_COLUMNS), from the metadata JSON beside each records
    CSV: the checkpoint's sha256, the code fingerprint of the evaluation rule, the seed, device, package versions,
    the job's log file and the settings id (the record file's name, which encodes the attack's settings). A clean
    record repeated by several jobs takes the lineage of the largest subset, as :func:`read_records` does.
    Records without metadata beside them get no lineage (their cells' lineage columns stay empty)."""
    lineage: dict[tuple[str, str], dict] = {}
    for path in map(Path, record_csvs):
        entry = record_lineage(path)
        if entry is None:
            continue
        frame = pd.read_csv(path, usecols=["model", "attack", "n_images"])
        for row in frame.itertuples():
            key = (row.model, row.attack)
            if key in lineage and lineage[key]["_n"] >= row.n_images:
                continue
            lineage[key] = {**entry, "_n": int(row.n_images)}
    return {key: {k: v for k, v in entry.items() if k != "_n"} for key, entry in lineage.items()}


def read_record_images(record_csvs: list[Path]) -> pd.DataFrame:
    """Per-image records (IMAGE_COLUMNS) beside the given records CSVs; files that lack them contribute nothing."""
    paths = [record_sidecars(p)[0] for p in record_csvs]
    return read_images([p for p in paths if p.exists()])


WORST_CASE = "Worst case"
# The column AutoAttack's authors ask for: an image counts as robust only if the model classifies it correctly
# and every attack of the table failed on it. Slow attacks run on smaller seeded subsets (nested: every subset is
# a prefix of one seeded permutation), so the worst case is taken over the images that every attack evaluated:
# the smallest subset (default run: SPSA's and NAttack's 16). That is why it could read above an attack's own
# cell measured on more images (AutoAttack on 24: its accuracy on the 8 images the others did not see was lower);
# on the same images it never can. So every worst-case cell states its n and the attacks it covers, and its
# settings row gives each covered attack's accuracy on exactly its images (`on_same_images`).
PARTIAL_MARK = "‡"
# A row evaluated under only part of the table's attacks (IG-Defense runs ig_defense.attacks): its worst case covers
# fewer attacks, so it would look more robust than rows that faced the whole suite. It is computed over its own
# attacks, marked with PARTIAL_MARK in Markdown, kept out of the CSV's worst-case column (NaN there, so that
# sorting the CSV does not rank it with the others) and stated in full in its settings row.


def _correct_by_index(images: pd.DataFrame, model: str, attack: str) -> pd.DataFrame:
    """Per-image rows (index -> correct, clean_correct) of one model and attack; empty when there are none."""
    part = images[(images.model == model) & (images.attack == attack)]
    return part.drop_duplicates("index").set_index("index")[["correct", "clean_correct"]]


def shared_images(images: pd.DataFrame, models: list[str], attacks: list[str]) -> pd.Index:
    """Test-split indices that every one of `attacks` evaluated for every one of `models` (sorted); models without
    per-image records for some attack are left out (their worst case cannot be computed and must not shrink the
    others' images)."""
    common = None
    for model in models:
        per_attack = [_correct_by_index(images, model, a).index for a in attacks]
        if not attacks or any(len(ix) == 0 for ix in per_attack):
            continue
        for ix in per_attack:
            common = ix if common is None else common.intersection(ix)
    return pd.Index([], dtype="int64") if common is None else common.sort_values()


def accuracy_on_images(images: pd.DataFrame, model: str, attack: str, index=None) -> tuple[int, int, int]:
    """(n, correct under the attack, correct clean) of one model and attack on the images in `index` (None: every
    image the attack evaluated); (0, 0, 0) without per-image records."""
    part = _correct_by_index(images, model, attack)
    if index is not None:
        part = part.loc[part.index.intersection(index)]
    return int(len(part)), int((part.correct == 1).sum()), int((part.clean_correct == 1).sum())


def worst_case_images(images: pd.DataFrame, model: str, attacks: list[str], index=None) -> tuple[pd.Index, int]:
    """(the images every attack evaluated, of those: how many are robust against all of them and correct clean) for
    one model; `index` restricts the images further (the images every row of the table shares)."""
    part = images[(images.model == model) & images.attack.isin(attacks)]
    if not attacks or part.empty or set(part.attack) != set(attacks):
        return pd.Index([], dtype="int64"), 0
    wide = part.pivot_table(index="index", columns="attack", values="correct", aggfunc="first").dropna()
    if index is not None:
        wide = wide.loc[wide.index.intersection(index)]
    clean = part.groupby("index").clean_correct.min().reindex(wide.index)
    robust = (wide == 1).all(axis=1) & (clean == 1)
    return wide.index, int(robust.sum())


def worst_case(images: pd.DataFrame, model: str, attacks: list[str], index=None) -> tuple[int, int]:
    """(images every attack evaluated, of those: robust against all of them and correct clean) for one model
    (:func:`worst_case_images`)."""
    used, robust = worst_case_images(images, model, attacks, index)
    return int(len(used)), robust


def interval_pct(accuracy: float, n: int) -> tuple[float, float]:
    """The Wilson 95% interval of an accuracy (fraction) measured on n images, in percent."""
    lo, hi = wilson_interval(int(round(accuracy * n)), int(n))
    return round(100.0 * lo, 2), round(100.0 * hi, 2)


def _fmt_eps(eps_255: float) -> str:
    return f"{eps_255:g}/255"


def table_iii_columns(records: pd.DataFrame, names: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(column label, attack name) pairs in TIP Table III order: Clean, C&W, L2 PGD, L-inf PGD, FGSM, SPSA,
    NAttack. Each column takes the one attack of its type; `names` (label -> attack name) settles a type
    with several attacks. Columns whose type no record has are left out."""
    names = dict(names or {})
    unknown = sorted(set(names) - set(TABLE_III_TYPES))
    if unknown:
        raise TableError(f"unknown Table III column(s) {', '.join(unknown)}; columns: {', '.join(TABLE_III_TYPES)}")
    columns = [("Clean", CLEAN)]
    for label, kind in TABLE_III_TYPES.items():
        if label in names:
            columns.append((label, names[label]))
            continue
        candidates = sorted(records.loc[records.attack_type == kind, "attack"].unique())
        if len(candidates) > 1:
            raise TableError(f"Table III column {label!r} could be any of the {kind} attacks "
                             f"{', '.join(candidates)}; name one in `columns`")
        if candidates:
            columns.append((label, candidates[0]))
    return columns


def table_i_columns(records: pd.DataFrame) -> list[tuple[str, str]]:
    """TIP Table I: Clean, untargeted L-inf PGD at each eps present (ascending), Gaussian noise at each
    severity/sigma present (ascending). Labels state the eps actually used."""
    columns = [("Clean", CLEAN)]
    pgd = records[records.attack_type == "pgd"].drop_duplicates("attack").sort_values(["eps_255", "attack"])
    clash = pgd[pgd.duplicated("eps_255", keep=False)]
    if len(clash):
        raise TableError(f"Table I needs one PGD attack per eps; several at eps {sorted(set(clash.eps_255))}: "
                         f"{', '.join(sorted(clash.attack))}")
    columns += [(f"PGD eps={_fmt_eps(row.eps_255)}", row.attack) for row in pgd.itertuples()]
    noise = records[records.attack_type == "gaussian"].drop_duplicates("attack")
    specs = sorted(((AttackSpec.from_config(json.loads(row.config)), row.attack) for row in noise.itertuples()),
                   key=lambda item: (item[0].sigma, item[1]))
    for spec, attack in specs:
        label = f"Gaussian s={spec.severity}" if spec.severity is not None else f"Gaussian sigma={_fmt_eps(round(spec.sigma * 255, 3))}"
        columns.append((label, attack))
    return columns


def accuracy_table(records: pd.DataFrame, columns: list[tuple[str, str]],
                   not_run: set[tuple[str, str]] = frozenset(), images: pd.DataFrame | None = None,
                   lineage: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lay records out as rows = models, columns = `columns` ((label, attack name) pairs), cells = accuracy
    in percent. Returns (table, settings) where settings has one row per cell: model, column, attack, its
    description, threat, eps, steps, step size, number of images, the accuracy in the cell and its Wilson 95%
    interval (ci_low_pct, ci_high_pct), the clean accuracy on exactly that cell's images (clean_on_images_pct:
    an attack run on a subset gets that subset's; needs `images`), whether the row ran only part of the attacks
    (partial_suite), and, from `lineage` (:func:`read_lineage`), what produced it.

    With per-image records (`images`, IMAGE_COLUMNS), the table ends with a WORST_CASE column: per model, the
    share of the images that are classified correctly and survive every attack column (:func:`worst_case`). Rows
    that ran every attack column are compared on the same images: those every attack evaluated for every such row
    (:func:`shared_images`). A row declared not to run some attack (partial suite) gets its worst case over its own
    attacks in its settings row only (NaN in the table: it is not ranked with the others). Each worst-case
    settings row names the attacks it covers, its n, the clean accuracy and each covered attack's accuracy on
    exactly its images (on_same_images), which the worst case never exceeds.

    A model without a record for some column is an error (a blank cell would hide a missing run), unless
    the (model, column label) pair is declared in ``not_run``: that cell is empty (NaN).
    """
    labels = [label for label, _ in columns]
    if len(set(labels)) != len(labels):
        raise TableError(f"duplicate column labels: {labels}")
    models = list(dict.fromkeys(records.model))
    by_key = {(row.model, row.attack): row for row in records.itertuples()}
    missing = [(m, a) for m in models for label, a in columns if (m, a) not in by_key and (m, label) not in not_run]
    if missing:
        raise TableError(f"no record for (model, attack) {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
    lineage = lineage or {}
    with_worst = images is not None and not images.empty
    suite = [(label, a) for label, a in columns if a != CLEAN]
    # rows that ran every attack of the table; the others (declared not_run) are partial-suite rows
    full = [m for m in models if all((m, a) in by_key for _, a in suite)]
    # the worst case of every full-suite row is taken on the same images: those every attack evaluated for every row
    shared = shared_images(images, full, [a for _, a in suite]) if with_worst else None
    nan = float("nan")
    table_rows, settings_rows = [], []
    for model in models:
        partial = model not in full
        row = {"model": model}
        for label, attack in columns:
            if (model, attack) not in by_key:  # declared not run
                row[label] = nan
                continue
            rec = by_key[(model, attack)]
            pct = round(100.0 * float(rec.accuracy), 2)
            row[label] = pct
            report = attack_report(getattr(rec, "attack_log", ""))
            low, high = interval_pct(float(rec.accuracy), int(rec.n_images))
            # the clean accuracy on exactly this cell's images (an attack on a subset: that subset's)
            clean_pct = pct if attack == CLEAN else nan
            if attack != CLEAN and with_worst:
                n_seen, _, clean_ok = accuracy_on_images(images, model, attack)
                if n_seen and n_seen == int(rec.n_images):
                    clean_pct = round(100.0 * clean_ok / n_seen, 2)
            settings_rows.append({
                "model": model, "column": label, "attack": attack, "description": rec.description,
                "threat": rec.threat, "eps_255": rec.eps_255, "steps": rec.steps, "step_size_255": rec.step_size_255,
                "n_images": int(rec.n_images), "accuracy_pct": pct, "ci_low_pct": low, "ci_high_pct": high,
                "clean_on_images_pct": clean_pct, "partial_suite": partial, "on_same_images": "",
                "accuracy_after_stages": "; ".join(f"{k} {v:.2f}" for k, v in report.get("robust_accuracy_after_pct", {}).items()),
                "warnings": " | ".join(report.get("warnings", [])),
                **{k: lineage.get((model, attack), {}).get(k, "") for k in LINEAGE_COLUMNS},
            })
        if with_worst:
            attacked = [(label, a) for label, a in suite if (model, a) in by_key]
            used, robust = worst_case_images(images, model, [a for _, a in attacked], None if partial else shared)
            n = len(used)
            pct = round(100.0 * robust / n, 2) if n else nan
            # a partial-suite row's worst case is not comparable with the others': kept out of the CSV column
            row[WORST_CASE] = nan if partial else pct
            low, high = interval_pct(robust / n, n) if n else (nan, nan)
            skipped = [label for label, a in suite if (model, a) not in by_key]
            on_same = []
            for label, a in attacked:
                k, ok, _ = accuracy_on_images(images, model, a, used)
                on_same.append(f"{label} {100.0 * ok / k:.2f}" if k else f"{label} -")
            clean_ok = accuracy_on_images(images, model, attacked[0][1], used)[2] if n else 0
            covered = ", ".join(label for label, _ in attacked)
            if partial:
                where = (f"on the {n} images all of them evaluated; partial suite: not evaluated under "
                         f"{', '.join(skipped)}, so not ranked with the full-suite rows (empty in the CSV table)")
            else:
                where = f"on the {n} images all of them evaluated for every full-suite row"
            settings_rows.append({
                "model": model, "column": WORST_CASE, "attack": "+".join(a for _, a in attacked),
                "description": (f"robust only if correct clean and every attack failed: {covered}, {where}" if n else
                                f"not computed: no per-image records shared by every attack ({covered})" if attacked
                                else "not computed: no attack of the table ran on this model"),
                "threat": "", "eps_255": None, "steps": None, "step_size_255": None, "n_images": n,
                "accuracy_pct": pct, "ci_low_pct": low, "ci_high_pct": high,
                "clean_on_images_pct": round(100.0 * clean_ok / n, 2) if n else nan, "partial_suite": partial,
                "on_same_images": "; ".join(on_same) if n else "", "accuracy_after_stages": "",
                "warnings": "", **{k: "" for k in LINEAGE_COLUMNS},
            })
        table_rows.append(row)
    out_columns = ["model", *labels] + ([WORST_CASE] if with_worst else [])
    return pd.DataFrame(table_rows, columns=out_columns), pd.DataFrame(settings_rows)


def settings_for_markdown(settings: pd.DataFrame) -> pd.DataFrame:
    """The settings table as people read it: digests shortened to 12 characters, long lineage columns left to
    the CSV."""
    out = settings.drop(columns=[c for c in ("versions", "log", "record_file") if c in settings.columns])
    for column in ("checkpoint_sha256", "code"):
        if column in out.columns:
            out[column] = out[column].fillna("").astype(str).str[:12]
    return out


def with_intervals(table: pd.DataFrame, settings: pd.DataFrame, floatfmt: str = ".2f") -> pd.DataFrame:
    """A copy of `table` for Markdown whose cells read "54.17 [34.3, 72.1]": the accuracy and its Wilson 95%
    interval (settings columns ci_low_pct / ci_high_pct; exact bounds, not symmetric, so both are printed). Cells
    without an interval stay as they are. A settings row whose value the table leaves empty (a partial-suite
    row's worst case) fills its cell."""
    if not {"ci_low_pct", "ci_high_pct"} <= set(settings.columns):
        return table
    marked = table.astype(object).copy()
    for rec in settings.itertuples():
        if pd.isna(rec.ci_low_pct) or pd.isna(rec.accuracy_pct) or rec.column not in marked.columns:
            continue
        text = interval_text(float(rec.accuracy_pct), float(rec.ci_low_pct), float(rec.ci_high_pct), floatfmt)
        for i in marked.index[marked["model"] == rec.model]:
            marked.at[i, rec.column] = text
    return marked


def _partial_worst(settings: pd.DataFrame) -> pd.Series:
    """Which settings rows are a partial-suite row's worst case (their cells state their own n)."""
    if "partial_suite" not in settings.columns:
        return pd.Series(False, index=settings.index)
    return (settings.column == WORST_CASE) & settings.partial_suite.fillna(False).astype(bool)


def column_n(settings: pd.DataFrame) -> dict[str, int | None]:
    """Column label -> the number of images behind every cell of the column, or None where its cells differ
    (partial-suite worst cases left out: their cells say their own n)."""
    cells = settings[~_partial_worst(settings)]
    cells = cells[cells.accuracy_pct.notna()] if "accuracy_pct" in cells.columns else cells
    return {column: (int(ns.iloc[0]) if ns.nunique() == 1 else None)
            for column, ns in cells.groupby("column", sort=False).n_images}


def markdown_cells(table: pd.DataFrame, settings: pd.DataFrame, floatfmt: str = ".2f") -> tuple[pd.DataFrame, str]:
    """(a copy of `table` for Markdown, the notes its marks need).

    Cells read "54.17 [34.3, 72.1]" (:func:`with_intervals`); a column whose cells all rest on the same number of
    images says it in its header ("AutoAttack (n=24)"), a column that mixes n says it in each cell ("... (n=16)");
    a partial-suite row's worst case states its own n, is marked PARTIAL_MARK and a note says which attacks it
    covers; cells whose attack warned are marked as :func:`mark_warned_cells` does. Group rows (no settings row) keep
    their numbers."""
    if not {"column", "n_images"} <= set(settings.columns):  # no cells: nothing to mark
        return table, ""
    marked = with_intervals(table, settings, floatfmt)
    ns = column_n(settings)
    for rec in settings[~_partial_worst(settings)].itertuples():
        if rec.column in ns and ns[rec.column] is None and pd.notna(rec.accuracy_pct):
            for i in marked.index[marked["model"] == rec.model]:
                marked.at[i, rec.column] = f"{marked.at[i, rec.column]} (n={int(rec.n_images)})"
    notes = []
    if "partial_suite" in settings.columns:
        # what the full-suite rows' worst case covers, once (their descriptions agree: same attacks, same images)
        ranked = settings[(settings.column == WORST_CASE) & ~_partial_worst(settings) & settings.accuracy_pct.notna()]
        notes += [f"{WORST_CASE}: {text}." for text in dict.fromkeys(ranked.description)]
        lines = []
        for rec in settings[_partial_worst(settings)].itertuples():
            if pd.notna(rec.accuracy_pct):  # its own n: the header's is the ranked rows'
                for i in marked.index[marked["model"] == rec.model]:
                    marked.at[i, rec.column] = f"{marked.at[i, rec.column]} (n={int(rec.n_images)}) {PARTIAL_MARK}"
            lines.append(f"- {PARTIAL_MARK} {rec.model}: {rec.description}")
        if lines:
            notes.append(f"{PARTIAL_MARK} Evaluated under only part of the attacks: its worst case covers only "
                         "those, so it is not comparable with the other rows' and not ranked with them:\n"
                         + "\n".join(lines))
    marked, warned = mark_warned_cells(marked, settings, floatfmt)
    if warned:
        notes.append(warned)
    marked = marked.rename(columns={c: f"{c} (n={n})" for c, n in ns.items() if n is not None and c in marked.columns})
    return marked, "\n\n".join(notes)


CELL_NOTE = ("Cells read accuracy [low, high]: the accuracy (%) and its Wilson 95% interval over the cell's images "
             "(exact bounds, not symmetric; ci_low_pct / ci_high_pct in the settings CSV). A header's (n=...) is the "
             "number of images behind every cell of its column; where the cells of a column differ, each cell says its "
             "n. The settings CSV's clean_on_images_pct is the clean accuracy on exactly each cell's images (an attack "
             "run on a subset: that subset's).")
WORST_CASE_NOTE = (f"{WORST_CASE}: an image counts as robust only if it is classified correctly and every attack of "
                   "the table failed on it, over the images every attack evaluated for every row (the smallest "
                   "subset). An attack's own cell may rest on more images (a larger n in its header), so the worst "
                   "case can read above it; on the same images it never does (each attack's accuracy on the worst "
                   f"case's images: on_same_images in the settings). {PARTIAL_MARK}: a row evaluated under only part "
                   "of the attacks; its worst case covers only those and is not ranked with the other rows.")
INTERVAL_NOTE = f"{CELL_NOTE} {WORST_CASE_NOTE}"


def attack_report(text) -> dict:
    """The attack's own report of a record (RECORD_COLUMNS attack_log) as a dict; {} when there is none."""
    if not isinstance(text, str) or not text.strip():
        return {}
    return json.loads(text)


WARNING_MARK = "†"


def mark_warned_cells(table: pd.DataFrame, settings: pd.DataFrame, floatfmt: str = ".2f") -> tuple[pd.DataFrame, str]:
    """A copy of `table` for Markdown in which every cell whose attack warned (settings column `warnings`, e.g.
    AutoAttack's gradient-masking check) reads "12.50 †", and a note listing those cells and warnings."""
    if "warnings" not in settings.columns:
        return table, ""
    warned = settings[settings["warnings"].fillna("").astype(str) != ""]
    if warned.empty:
        return table, ""
    marked = table.astype(object).copy()
    lines = []
    for rec in warned.itertuples():
        rows = marked.index[marked["model"] == rec.model]
        for i in rows:
            value = marked.at[i, rec.column]
            text = value if isinstance(value, str) else format(float(value), floatfmt)
            marked.at[i, rec.column] = f"{text} {WARNING_MARK}"
        lines.append(f"- {WARNING_MARK} {rec.model}, {rec.column}: {rec.warnings}"
                     + (f" (robust accuracy after each stage: {rec.accuracy_after_stages})"
                        if getattr(rec, "accuracy_after_stages", "") else ""))
    note = (f"{WARNING_MARK} The attack warned that this evaluation may be unreliable (AutoAttack: Square, a "
            "black-box attack, fooled images the gradient-based stages could not, a sign of gradient masking):\n"
            + "\n".join(lines))
    return marked, note


def robustness_table(
    record_csvs: list[Path],
    layout: str,
    dataset: str,
    out_csv: Path,
    out_md: Path,
    settings_csv: Path,
    settings_md: Path,
    columns: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Workflow step: records CSVs (one per model, or one per model and attack) -> one table (CSV +
    Markdown) and its settings table.

    layout 'table_iii': Clean, C&W, L2 PGD, L-inf PGD, FGSM, SPSA, NAttack (TIP Table III; `columns` maps a
    column label to an attack name where a type has several attacks). layout 'table_i': Clean, PGD at every
    eps, Gaussian noise at every severity (TIP Table I). Returns the table.
    """
    if layout not in LAYOUTS:
        raise TableError(f"unknown table layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    paths = [Path(p) for p in record_csvs]
    records = read_records(paths)
    cols = table_iii_columns(records, columns) if layout == "table_iii" else table_i_columns(records)
    table, settings = accuracy_table(records, cols, images=read_record_images(paths), lineage=read_lineage(paths))
    n = sorted(set(settings.loc[settings.column != WORST_CASE, "n_images"]))
    name = "TIP Table III layout" if layout == "table_iii" else "TIP Table I layout"
    title = f"Accuracy (%) on the {dataset} test split ({name})"
    notes = (f"Images per cell: {', '.join(map(str, n))}. eps in 1/255 units. Every cell's attack, settings and "
             f"lineage: {Path(settings_md).name} (CSV: {Path(settings_csv).name}). {CELL_NOTE}"
             + (f" {WORST_CASE_NOTE}" if WORST_CASE in table.columns else "") + "\n\n" + "\n".join(
                 f"- {label}: {desc}" for label, desc in
                 settings[settings.column != WORST_CASE].drop_duplicates("column")[["column", "description"]].values))
    marked, marks = markdown_cells(table, settings)
    write_csv(table, out_csv)
    write_table(marked, None, out_md, title, notes + ("\n\n" + marks if marks else ""), floatfmt=".2f")
    write_csv(settings, settings_csv)
    write_table(settings_for_markdown(settings), None, settings_md, f"Settings of every cell of {Path(out_md).name}",
                f"Full lineage (package versions, log and record files, whole digests): {Path(settings_csv).name}.",
                floatfmt=".2f")
    return table


# ------------------------------------------------------------------------------------------------ sweeps
def sweep_specs(
    eps_255: float, steps_values: list[int], eps_values_255: list[float], steps: int, random_start: bool = False
) -> list[tuple[str, AttackSpec]]:
    """("steps" | "eps", spec) pairs: L-inf PGD at k in steps_values with eps fixed, then at each eps with k
    fixed; step size eps/sqrt(k) throughout (TIP Fig 15)."""
    out = [("steps", AttackSpec.from_config({"type": "pgd", "eps": eps_255, "steps": int(k), "random_start": random_start}))
           for k in steps_values]
    out += [("eps", AttackSpec.from_config({"type": "pgd", "eps": e, "steps": int(steps), "random_start": random_start}))
            for e in eps_values_255]
    return out


def compute_pgd_sweep(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    model_name: str,
    specs: list[tuple[str, AttackSpec]],
    seed: int,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Rows (SWEEP_COLUMNS) of accuracy under each sweep point; each point has its own fresh generator.

    A point that both sweeps share (the fixed eps at the fixed k: in the papers' sweeps, eps 8/255 at k = 10
    is in each) is one attack, run once: with a fresh generator from the same seed its result is the same."""
    rows, accuracy = [], {}
    for sweep, spec in tqdm(specs, desc=f"PGD sweep {model_name}", mininterval=5.0):
        if spec not in accuracy:
            accuracy[spec] = robust_accuracy(model, images, labels, spec, batch_size, attack_generator(seed))
        acc = accuracy[spec]
        rows.append({"model": model_name, "sweep": sweep, "eps_255": round(spec.eps * 255, 6), "steps": spec.steps,
                     "step_size_255": round(spec.resolved_step_size * 255, 6), "n_images": len(labels), "accuracy": acc})
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))


def pgd_sweep(
    model_path: Path,
    test_path: Path,
    model_name: str,
    eps: float,
    steps_values: list[int],
    eps_values: list[float],
    steps: int,
    n_images: int | None,
    seed: int,
    batch_size: int,
    out_csv: Path,
    meta_path: Path,
    random_start: bool = False,
) -> pd.DataFrame:
    """Workflow step: L-inf PGD accuracy of one model at k = steps_values with eps fixed (1/255 units), and at
    eps = eps_values with k = steps fixed, on a seeded subset of the test split. Writes CSV + metadata."""

    if not steps_values and not eps_values:
        raise ValueError("a sweep needs steps_values or eps_values")
    specs = sweep_specs(eps, steps_values, eps_values, steps, random_start)  # validates before loading
    model, ckpt, images, labels, _ = _load_subset(model_path, test_path, n_images, seed)
    frame = compute_pgd_sweep(model, images, labels, model_name, specs, seed, batch_size)
    write_csv(frame, out_csv)
    params = {"model_name": model_name, "eps": eps, "steps_values": list(steps_values), "eps_values": list(eps_values),
              "steps": steps, "random_start": random_start, "n_images": n_images, "batch_size": batch_size,
              "model": str(model_path), "test": str(test_path)}
    write_json(metadata("pgd_sweep", params, seed=seed, model_meta=ckpt.get("meta", {}).get("params"),
                        batchnorm_folded=getattr(model, FOLDED, 0)), meta_path)
    return frame


def sweep_figure(frame: pd.DataFrame, x: str, xlabel: str, title: str):
    """Robust accuracy (%) against `x`, one line per model; bands: Wilson 95% intervals over each point's
    test images (the sweep has one run per model and setting, so there is no spread over repeats)."""

    plt, sns = plotting()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    data = frame.sort_values(["model", x], kind="stable").assign(accuracy_pct=100.0 * frame.accuracy)
    models = list(dict.fromkeys(data.model))
    palette = dict(zip(models, sns.color_palette(n_colors=len(models))))
    sns.lineplot(data=data, x=x, y="accuracy_pct", hue="model", palette=palette, marker="o", errorbar=None, ax=ax)
    for model, rows in data.groupby("model", sort=False):
        bounds = [wilson_interval(int(round(a * n)), int(n)) for a, n in zip(rows.accuracy, rows.n_images)]
        low, high = (100 * np.array(b) for b in zip(*bounds))
        ax.fill_between(rows[x], low, high, color=palette[model], alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"{title}\nband: Wilson 95% CI over the test images")
    return fig


def _single(values, what: str):
    distinct = sorted(set(values))
    if len(distinct) != 1:
        raise TableError(f"sweep files disagree on the fixed {what}: {distinct}")
    return distinct[0]


def sweep_figures(sweep_csvs: list[Path], out_csv: Path, steps_png: Path, eps_png: Path) -> pd.DataFrame:
    """Workflow step: sweep CSVs of several models -> combined CSV, accuracy vs k and accuracy vs eps figures
    (one line per model, TIP Fig 15). The fixed eps / k of each panel is in its title."""
    frames = [pd.read_csv(p) for p in sweep_csvs]
    for path, frame in zip(sweep_csvs, frames):
        missing = [c for c in SWEEP_COLUMNS if c not in frame.columns]
        if missing:
            raise TableError(f"{path} is not a sweep file: missing columns {', '.join(missing)}")
    frame = pd.concat(frames, ignore_index=True)
    write_csv(frame, out_csv)
    by_steps, by_eps = frame[frame.sweep == "steps"], frame[frame.sweep == "eps"]
    for name, part in (("steps", by_steps), ("eps", by_eps)):
        if not len(part):
            raise TableError(f"the sweep files hold no '{name}' sweep; both figures need their sweep")
    eps = _single(by_steps.eps_255, "eps of the steps sweep")
    n = _single(frame.n_images, "number of images")
    save_figure(sweep_figure(by_steps, "steps", "PGD steps k (step size eps/√k)",
                             f"L-inf PGD, eps={_fmt_eps(eps)}, n={n}"), steps_png)
    k = _single(by_eps.steps, "k of the eps sweep")
    save_figure(sweep_figure(by_eps, "eps_255", "eps (1/255)", f"L-inf PGD, k={k}, n={n}"), eps_png)
    return frame


