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
from advneurons.runtime import autocast, check_precision, device, fast_batch, fast_layout, generator
from advneurons.data import load_split
from advneurons.evaluation.paired_stats import wilson_interval
from advneurons.evaluation.pairs import select_subset
from advneurons.models.checkpoint import load_model
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

    Images the model already gets wrong count as errors, so this is accuracy under attack, never more
    than the clean accuracy for an attack that only ever moves images further from the label.
    """
    correct = robust_correct(model, images, labels, spec, batch_size, generator, progress)
    return float(correct.sum()) / max(1, len(labels))


def robust_correct(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: AttackSpec,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    progress: bool = False,
    autoattack_log=None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Per image: is it still classified correctly after `spec` perturbs it? (bool tensor, CPU)
    `autoattack_log` (attacks.AutoAttackLog) collects AutoAttack's own report over the batches;
    `precision` "bf16" runs the attack under bfloat16 autocast (runtime.autocast), the final check in fp32."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    correct = []
    target = attack_target(model)  # a randomised defense is attacked through its expected logits (EOT)
    starts = range(0, len(labels), batch_size)
    for start in tqdm(starts, desc=spec.describe(), disable=not progress, leave=False, mininterval=5.0):
        x, y = _on_model_device(model, images[start : start + batch_size], labels[start : start + batch_size])
        x = fast_batch(x)
        # the generator stays on the CPU: same draws anywhere
        with autocast(precision, x.device):
            x_adv = run_attack(spec, target, x, y, generator=generator, autoattack_log=autoattack_log)
        x_adv = x_adv.float()
        with eval_mode(model):
            correct.append(_correct(model, x_adv, y))
    return torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)


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
) -> pd.DataFrame:
    """Records (RECORD_COLUMNS): clean accuracy and accuracy under each attack (name -> config entry).

    Every attack gets a fresh generator from `seed`, so one attack's result does not depend on which
    other attacks run before it. `precision`: of the attacks (:func:`robust_correct`).
    """
    specs = {name: AttackSpec.from_config(cfg) for name, cfg in attacks.items()}  # fail before any work
    if CLEAN in specs:
        raise ValueError(f"'{CLEAN}' is reserved for the unattacked accuracy; rename that attack")
    n = len(labels)
    clean = clean_correct(model, images, labels, batch_size)
    rows = [accuracy_record(model_name, CLEAN, None, n, float(clean.sum()) / max(1, n), clean)]
    for name, spec in specs.items():
        aa_log = AutoAttackLog() if spec.type == "autoattack" else None
        correct = robust_correct(model, images, labels, spec, batch_size, attack_generator(seed), progress=True,
                                 autoattack_log=aa_log, precision=precision)
        acc = float(correct.sum()) / max(1, n)
        log.info("%s / %s: %.4f (%s)", model_name, name, acc, spec.describe())
        report = aa_log.to_dict() if aa_log is not None else None
        for message in (report or {}).get("warnings", []):
            log.warning("%s / %s: AutoAttack warns: %s", model_name, name, message)
        rows.append(accuracy_record(model_name, name, spec, n, acc, correct, report))
    frame = records_frame(rows)
    note = adaptive_note(model)
    if note:  # the table's settings say how a randomised defense was attacked
        attacked = frame.attack != CLEAN
        frame.loc[attacked, "description"] = frame.loc[attacked, "description"] + f"; {note}"
    return frame


def _load_subset(model_path: Path, test_path: Path, n_images: int | None, seed: int):
    model, ckpt = load_model(model_path)
    fast_layout(model.to(device()))
    images, labels = load_split(test_path)
    index = torch.from_numpy(select_subset(len(labels), n_images, seed))
    return model, ckpt, images[index], labels[index]


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
) -> pd.DataFrame:
    """Workflow step: clean and robust accuracy of one model under each attack (name -> config entry,
    1/255 units) on a seeded subset of `n_images` test images (None: all). Writes the records CSV
    (RECORD_COLUMNS) and a metadata JSON; returns the records. `precision` "bf16": the attacks under
    bfloat16 autocast (opt-in, for GPUs)."""
    check_precision(precision)

    for name, cfg in attacks.items():
        try:
            AttackSpec.from_config(cfg)
        except ValueError as exc:
            raise ValueError(f"attack {name!r}: {exc}") from exc
    model, ckpt, images, labels = _load_subset(model_path, test_path, n_images, seed)
    records = evaluate_model(model, images, labels, attacks, model_name, seed, batch_size, precision)
    write_csv(records, out_csv)
    meta = metadata(
        "evaluate_attack",
        {"attacks": attacks, "model_name": model_name, "n_images": n_images, "batch_size": batch_size,
         "model": str(model_path), "test": str(test_path), "precision": precision},
        seed=seed,
        accuracy={row.attack: row.accuracy for row in records.itertuples()},
        descriptions={row.attack: row.description for row in records.itertuples()},
        model_meta=ckpt.get("meta", {}).get("params"),
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
                   not_run: set[tuple[str, str]] = frozenset()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lay records out as rows = models, columns = `columns` ((label, attack name) pairs), cells = accuracy
    in percent. Returns (table, settings) where settings has one row per cell: model, column, attack, its
    description, threat, eps, steps, step size, number of images and the accuracy in the cell.

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
    table_rows, settings_rows = [], []
    for model in models:
        row = {"model": model}
        for label, attack in columns:
            if (model, attack) not in by_key:  # declared not run
                row[label] = float("nan")
                continue
            rec = by_key[(model, attack)]
            pct = round(100.0 * float(rec.accuracy), 2)
            row[label] = pct
            report = attack_report(getattr(rec, "attack_log", ""))
            settings_rows.append({
                "model": model, "column": label, "attack": attack, "description": rec.description,
                "threat": rec.threat, "eps_255": rec.eps_255, "steps": rec.steps, "step_size_255": rec.step_size_255,
                "n_images": int(rec.n_images), "accuracy_pct": pct,
                "accuracy_after_stages": "; ".join(f"{k} {v:.2f}" for k, v in report.get("robust_accuracy_after_pct", {}).items()),
                "warnings": " | ".join(report.get("warnings", [])),
            })
        table_rows.append(row)
    return pd.DataFrame(table_rows, columns=["model", *labels]), pd.DataFrame(settings_rows)


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
            marked.at[i, rec.column] = f"{format(float(value), floatfmt)} {WARNING_MARK}"
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
    records = read_records([Path(p) for p in record_csvs])
    cols = table_iii_columns(records, columns) if layout == "table_iii" else table_i_columns(records)
    table, settings = accuracy_table(records, cols)
    n = sorted(set(settings.n_images))
    name = "TIP Table III layout" if layout == "table_iii" else "TIP Table I layout"
    title = f"Accuracy (%) on the {dataset} test split ({name})"
    notes = (f"Images per cell: {', '.join(map(str, n))}. eps in 1/255 units. Every cell's attack and settings: "
             f"{Path(settings_md).name}.\n\n" + "\n".join(
                 f"- {label}: {desc}" for label, desc in settings.drop_duplicates("column")[["column", "description"]].values))
    marked, warned = mark_warned_cells(table, settings)
    write_csv(table, out_csv)
    write_table(marked, None, out_md, title, notes + ("\n\n" + warned if warned else ""), floatfmt=".2f")
    write_csv(settings, settings_csv)
    write_table(settings, None, settings_md, f"Settings of every cell of {Path(out_md).name}", floatfmt=".2f")
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
    """Rows (SWEEP_COLUMNS) of accuracy under each sweep point; each point has its own fresh generator."""
    rows = []
    for sweep, spec in tqdm(specs, desc=f"PGD sweep {model_name}", mininterval=5.0):
        acc = robust_accuracy(model, images, labels, spec, batch_size, attack_generator(seed))
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
    model, ckpt, images, labels = _load_subset(model_path, test_path, n_images, seed)
    frame = compute_pgd_sweep(model, images, labels, model_name, specs, seed, batch_size)
    write_csv(frame, out_csv)
    params = {"model_name": model_name, "eps": eps, "steps_values": list(steps_values), "eps_values": list(eps_values),
              "steps": steps, "random_start": random_start, "n_images": n_images, "batch_size": batch_size,
              "model": str(model_path), "test": str(test_path)}
    write_json(metadata("pgd_sweep", params, seed=seed, model_meta=ckpt.get("meta", {}).get("params")), meta_path)
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


