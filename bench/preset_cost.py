"""Cost model of a preset: measured per-unit costs of its heavy steps times the preset's own counts.

On whatever machine runs it, this measures at the preset's widths (full width for the paper preset), on the
model as the workflow runs each step (attacks: eval mode, BatchNorm folded, parameters frozen):
  * t_fwd   forward pass per image (no gradient),
  * t_grad  one attack step per image (forward + backward to the input),
  * t_train one training step per image (forward + backward + SGD step, train mode),
  * queries SPSA's and NAttack's cost per query and image, timed directly (noise draws and projections included),
  * AutoAttack each stage of the standard version run alone, with two iteration counts: its cost per iteration
            (APGD-T and FAB-T: all 9 target classes) or Square query, and what it pays once,
  * MeanSparse how much its ReLUs add to a forward pass and an attack step,
  * CROWN   PSN scoring per image of every scored node (auto_LiRPA; psn.last_nodes as the step has it), measured
            at two small widths and extrapolated by a power law to the preset's width (CROWN at full width takes
            minutes per image on a CPU; `--psn-direct`, or a width of at most 1/4, measures it as it is),
and checks the model against a direct run of PGD-10 per image (C&W's iterations, which cost more than a
gradient step, are timed directly). Every job of the preset's
plan (advneurons.workflow.plan, the DAG's own registries) then gets an estimate from its counts: epochs x
training images x the method's cost per image (PAT / ALP / SNS: PGD-k + two training passes; NAT / EAT: one
Step-LL gradient + two passes), images x attack cost (PGD-k: k gradients; C&W: binary-search steps x iterations;
SPSA / NAttack: iterations x samples queries; AutoAttack: APGD-CE on every image, then APGD-T, FAB-T and Square on
`--robust-fraction` of an adversarially trained model's images), the suppression study's attacks of every
variant, and so on; every job also pays a step's start-up. It prints estimated hours per rule and in total, and
the biggest jobs.

Run:  .venv/bin/python bench/preset_cost.py [--preset presets/cifar10_paper.yaml] [--device cpu] [--threads 2]
It takes a few minutes on 2 CPU cores (full-width VGG16 and ResNet18). The figures are estimates from
measured unit costs, not a run of the preset; the assumptions are printed with them.

How far to trust it: `--run DIR` checks the model against a finished run of the same config (DIR holds its
benchmarks/, logs/ and results/; split sizes are read from the run's data metadata): per rule, and per attack of
the robustness evaluation, the estimated against the measured job-seconds. For the default digits run:
    .venv/bin/python bench/preset_cost.py --preset config.yaml --threads 1 --run . --startup 0.2
(`--threads` as the run's jobs had them; `--startup`: a step's start-up in that run, ~0.2 s through the step server).
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: the timed attacks' progress bars stay quiet

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402
from step_overhead import PREAMBLE, planned_jobs, script_imports  # noqa: E402  bench/ is on the path of a script run in it

ROOT = Path(__file__).resolve().parents[1]
# Images per split of CIFAR-10 (the official 50000 / 10000); digits' splits are computed (split_sizes).
CIFAR10_IMAGES = {"train_pool": 50000, "test": 10000}
AUTOATTACK_ITERS = {"apgd_ce": 100, "apgd_t": 9 * 100, "fab_t": 9 * 100, "square": 5000}


def merged_config(paths: list[Path]) -> dict:
    """The config Snakemake builds from these files: each one deep-merged over the ones before it."""
    def update(base, extra):
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                update(base[key], value)
            else:
                base[key] = value
        return base

    config = {}
    for path in paths:
        update(config, yaml.safe_load(path.read_text()) or {})
    return config


def split_sizes(config: dict, run: Path | None = None) -> dict[str, int]:
    """Images in the train / val / test splits the config's dataset step makes: read from a finished run's
    data metadata when `run` is given, else computed (digits: the stratified split itself; CIFAR-10: the
    official sizes less the validation share, capped by dataset.max_images)."""
    if run is not None:
        metas = sorted((run / "results").glob("*/data/metadata.json"))
        if len(metas) != 1:
            raise SystemExit(f"expected one results/*/data/metadata.json under {run}, found {len(metas)}")
        splits = json.loads(metas[0].read_text())["splits"]
        return {name: int(splits[name]["n"]) for name in ("train", "val", "test")}
    ds = config["dataset"]
    if ds["name"] == "digits":
        from advneurons.data import load_digits_images, stratified_split

        _, labels = load_digits_images()
        parts = stratified_split(labels, ds["test_fraction"], ds["val_fraction"], ds["split_seed"])
        return {name: len(index) for name, index in parts.items()}
    n_train = round(CIFAR10_IMAGES["train_pool"] * (1 - ds["val_fraction"]))
    sizes = {"train": n_train, "val": CIFAR10_IMAGES["train_pool"] - n_train, "test": CIFAR10_IMAGES["test"]}
    caps = ds.get("max_images") or {}
    return {name: n if caps.get(name) is None else min(n, caps[name]) for name, n in sizes.items()}


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def unit_costs(arch: str, width: float, dataset: str, device, batch: int, repeats: int) -> dict[str, float]:
    """Seconds per image of a forward pass, an attack step and a training step of one architecture, each on the
    model as the workflow runs that step: training on the model in train mode, forward passes and attack steps on
    an eval-mode copy with BatchNorm folded and parameters frozen (`models.inference.for_attacks`, which every
    attacking step uses, and the copy adversarial training crafts its examples on)."""
    import copy

    import torch.nn.functional as F

    from advneurons.attacks import AttackSpec, run_attack
    from advneurons.models.architectures import build_model
    from advneurons.models.inference import fold_batchnorm
    from advneurons.runtime import fast_batch, fast_layout

    # in the layout the workflow's trainings and evaluations run in (channels_last, where runtime.fast_layout uses it)
    model = fast_layout(build_model(arch, dataset, width=width).to(device))
    attacker = copy.deepcopy(model).eval().requires_grad_(False)
    with torch.no_grad():
        fold_batchnorm(attacker)
    attacker = fast_layout(attacker)
    x = fast_batch(torch.rand(batch, 3, 32, 32, device=device), model)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def forward():
        with torch.no_grad():
            attacker(x)
        sync(device)

    def grad_step():
        xa = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(attacker(xa), y), xa)
        sync(device)

    def train_step():
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sync(device)

    out = {name: median_time(fn, repeats) / batch for name, fn in
           (("t_fwd", forward), ("t_grad", grad_step), ("t_train", train_step))}
    # Floating-point operations per image of each unit (convolutions and matrix products, torch's own count):
    # what a FLOP-rate assumption turns into seconds on a device this script has not run on.
    from torch.utils.flop_counter import FlopCounterMode

    def input_gradient():  # as grad_step, with .backward(): the counter does not support autograd.grad
        model.eval().requires_grad_(False)
        xa = x.clone().requires_grad_(True)
        F.cross_entropy(model(xa), y).backward()
        model.requires_grad_(True)

    for name, fn in (("fwd", forward), ("grad", input_gradient), ("train", train_step)):
        with FlopCounterMode(display=False) as counter:
            fn()
        out["flops_" + name] = counter.get_total_flops() / batch
    # Direct checks of the model: PGD-10 and 4 iterations of C&W per image, against the formula.
    pgd = AttackSpec("pgd", eps=8 / 255, steps=10)
    out["pgd10_direct"] = median_time(lambda: (run_attack(pgd, attacker, x, y), sync(device)), 1) / batch
    cw = AttackSpec("cw_l2", steps=4, search_steps=1)
    out["cw4_direct"] = median_time(lambda: (run_attack(cw, attacker, x, y), sync(device)), 1) / batch
    out.update(query_costs(attacker, x, device))
    out.update(meansparse_factors(attacker, x, y, device, repeats))
    out["model_load"] = model_load_seconds(model, arch, dataset, width, repeats)
    return out


def model_load_seconds(model, arch: str, dataset: str, width: float, repeats: int) -> float:
    """What a job pays once to get its model: the checkpoint loaded (weights_only) and made ready to attack."""
    import tempfile

    from advneurons.models.checkpoint import load_model, save_model
    from advneurons.models.inference import for_attacks

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        save_model(model, path, arch, dataset, width, 10, meta={})
        return median_time(lambda: for_attacks(load_model(path)[0]), repeats)


def meansparse_factors(attacker, x, y, device, repeats: int) -> dict[str, float]:
    """How much slower a forward pass and an attack step are with MeanSparse's ReLUs (each compares every
    activation with its channel's mean): the defended model's passes cost these factors times the plain ones."""
    import copy

    import torch.nn.functional as F

    from advneurons.defenses.meansparse import attach, channel_stats

    defended = attach(copy.deepcopy(attacker), channel_stats(attacker, x), alpha=0.5)

    def forward(model):
        with torch.no_grad():
            model(x)
        sync(device)

    def grad_step(model):
        xa = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
        sync(device)

    return {"meansparse_fwd": median_time(lambda: forward(defended), repeats) / median_time(lambda: forward(attacker), repeats),
            "meansparse_grad": median_time(lambda: grad_step(defended), repeats) / median_time(lambda: grad_step(attacker), repeats)}


def query_costs(attacker, x, device) -> dict[str, float]:
    """Seconds per image of a query of SPSA and NAttack and of an iteration of each AutoAttack stage, timed
    directly: besides the model's passes they draw noise, project and keep state, which at a narrow width costs
    as much as the passes. Each runs a few iterations at a budget so small that no image is ever fooled (labels:
    the model's own predictions), so that every image pays for every iteration, as a robust one does."""
    from advneurons.attacks.black_box import nattack, spsa

    with torch.no_grad():
        y = attacker(x).argmax(1)
    n, tiny = len(x), 1e-6
    steps, samples = 2, 32
    out = {}
    # SPSA: the start point, then per iteration `samples` queries and the check of the new point
    seconds = median_time(lambda: (spsa(attacker, x, y, tiny, steps, samples), sync(device)), 1)
    out["spsa_query"] = seconds / (n * (1 + steps * (samples + 1)))
    seconds = median_time(lambda: (nattack(attacker, x, y, tiny, steps, samples), sync(device)), 1)
    out["nattack_query"] = seconds / (n * (1 + steps * (samples + 1)))
    out.update(autoattack_stage_costs(attacker, x, y, tiny, device))
    return out


def autoattack_stage_costs(attacker, x, y, eps, device, short: int = 2, long: int = 6) -> dict[str, float]:
    """Seconds per image of each stage of the standard AutoAttack, run alone: ``aa_<stage>`` per iteration of the
    whole stage (APGD-T and FAB-T: all 9 target classes; Square: per query) and ``aa_<stage>_fixed`` for what a
    stage pays once (its first and last passes, AutoAttack's clean check). Each stage runs with `short` and `long`
    iterations (10x as many Square queries); the difference gives the per-iteration cost, the rest is fixed."""
    from pyautoattack import AutoAttack

    from advneurons.attacks.ensemble import _ContiguousInputs

    def stage_seconds(stage, iters):
        adversary = AutoAttack(_ContiguousInputs(attacker), eps=eps, norm="Linf", version="standard", seed=0,
                               device=x.device)
        adversary.attacks_to_run = [stage]
        for part in (adversary.apgd, adversary.apgd_targeted, adversary.fab):
            part.n_iter = iters
        adversary.square.n_queries = 10 * iters

        def run():
            adversary.run_standard_evaluation(x.detach().contiguous(), y, batch_size=len(x))
            sync(device)

        with torch.random.fork_rng(devices=[x.device.index or 0] if x.device.type == "cuda" else []):
            return median_time(run, 1) / len(x)

    out = {}
    for stage in ("apgd-ce", "apgd-t", "fab-t", "square"):
        key = "aa_" + stage.replace("-", "_")
        t_short, t_long = stage_seconds(stage, short), stage_seconds(stage, long)
        units = 10 if stage == "square" else 1
        per_unit = max(t_long - t_short, 0.0) / ((long - short) * units)
        out[key] = per_unit
        out[key + "_fixed"] = max(t_short - short * units * per_unit, 0.0)
    return out


def crown_per_image(arch: str, width: float, dataset: str, nodes: str, eps: float, budget_mb: float,
                    direct: bool, last_nodes: int | None = None) -> tuple[float, int, str]:
    """Seconds of PSN CROWN scoring per image (every scored node, or the last `last_nodes` of them with IBP
    bounds for the others, as psn.last_nodes has the step do), the number of nodes, and how it was got."""
    from advneurons.models.architectures import build_model
    from advneurons.psn.scores import PSNBounder, scored_layers

    def measure(w):
        model = build_model(arch, dataset, width=w).eval()
        x = torch.rand(1, 3, 32, 32)
        layers = scored_layers(model, nodes)
        bounder = PSNBounder(model, x, "CROWN", budget_mb, layers, last_nodes=last_nodes)
        start = time.perf_counter()
        with torch.no_grad():
            bounder.terms(x, eps)
        return time.perf_counter() - start, len(layers) if last_nodes is None else min(last_nodes, len(layers))

    if direct or width <= 0.25:  # narrow models bound in seconds: measured as they are (no extrapolation)
        seconds, n = measure(width)
        return seconds, n, f"measured at width {width:g}"
    small = [width / 8, width / 4]
    (s1, n), (s2, _) = measure(small[0]), measure(small[1])
    import math

    power = math.log(s2 / s1) / math.log(small[1] / small[0])
    seconds = s2 * (width / small[1]) ** power
    return seconds, n, f"extrapolated from widths {small[0]:g}, {small[1]:g} (time ~ width^{power:.2f})"


def run_outcomes(run: Path) -> dict[tuple[str, str], dict]:
    """What a finished run's evaluations met, per (model label, attack name): for AutoAttack the share of the
    images still robust after each stage (the records' attack log; "clean": correctly classified to begin with),
    for SPSA and NAttack the model queries spent per image (the per-image records). The cost model's own guesses
    of these are outcomes of the attack, not costs: with them taken from the run, a comparison tests the unit costs."""
    import gzip

    import pandas as pd
    from run_profile import current_files

    out = {}
    for records in current_files((run / "results").glob("*/robustness/*/*.csv")):
        frame = pd.read_csv(records)
        for row in frame[frame.attack != "clean"].itertuples():
            key = (row.model, row.attack)
            if row.attack_type == "autoattack" and isinstance(row.attack_log, str) and row.attack_log:
                after = json.loads(row.attack_log)["robust_accuracy_after_pct"]
                out[key] = {"autoattack_after": {stage: pct / 100 for stage, pct in after.items()}}
            elif row.attack_type in ("spsa", "nattack"):
                images = records.with_name(records.stem + ".images.csv.gz")
                if images.exists():
                    with gzip.open(images, "rt") as handle:
                        per_image = pd.read_csv(handle)
                    spent = per_image[(per_image.attack == row.attack) & (per_image.queries >= 0)].queries
                    if len(spent):
                        out[key] = {"queries_per_image": float(spent.mean())}
    return out


def attack_seconds(attack: dict, u: dict, robust: bool, robust_fraction: float, outcome: dict | None = None) -> float:
    """Seconds per image of one attack entry (config units) on a model with unit costs `u`; `outcome` (from
    :func:`run_outcomes`) replaces the guesses of how many images each AutoAttack stage meets and how many
    queries a black-box attack spends."""
    outcome = outcome or {}
    t = attack["type"]
    if t in ("fgsm", "step_ll"):
        return u["t_grad"]
    if t in ("pgd", "pgd_l2", "pgd_targeted", "mifgsm"):
        return attack.get("steps", 10) * u["t_grad"] + u["t_fwd"]
    if t == "cw_l2":  # an iteration costs more than a gradient step (Adam, bookkeeping): measured directly
        return attack.get("search_steps", 3) * attack.get("steps", 300) * u["cw4_direct"] / 4
    if t in ("gaussian", "uniform"):
        return u["t_fwd"]
    if t in ("spsa", "nattack"):  # every query costs what query_costs measured
        per_query = u[f"{t}_query"]
        if "queries_per_image" in outcome:
            return outcome["queries_per_image"] * per_query
        return attack.get("steps", 100) * attack.get("samples", 512 if t == "spsa" else 300) * per_query
    if t == "autoattack":  # the standard version's counts unless the entry cuts them (steps, queries)
        iters = attack.get("steps") or AUTOATTACK_ITERS["apgd_ce"]
        queries = attack.get("queries") or AUTOATTACK_ITERS["square"]
        ran = attack.get("stages")  # None: all four; an entry may leave stages out
        stages = {stage: u[f"aa_{stage.replace('-', '_')}_fixed"] + n * u[f"aa_{stage.replace('-', '_')}"]
                  for stage, n in (("apgd-ce", iters), ("apgd-t", iters), ("fab-t", iters), ("square", queries))
                  if ran is None or stage in ran}
        after = outcome.get("autoattack_after")
        if after is None:  # the first stage meets every image, the later ones `robust_fraction` of a robust model's
            first, *later = stages.values()
            return first + (robust_fraction if robust else 0.0) * sum(later)
        # each stage attacks the images still robust after the one before it (the first: the correctly classified)
        meets, seconds = after.get("clean", 1.0), 0.0
        for stage, cost in stages.items():
            seconds += meets * cost
            meets = after.get(stage, meets)
        return seconds
    raise ValueError(f"no cost model for attack type {t}")


# The model passes in each unit cost: (forward passes, attack steps). The rest of a unit (noise draws, projections,
# an attack's bookkeeping) does not depend on the model.
MODEL_PASSES = {"t_fwd": (1, 0), "t_grad": (0, 1), "pgd10_direct": (1, 10), "cw4_direct": (0, 4),
                "spsa_query": (1, 0), "nattack_query": (1, 0), "aa_square": (1, 0),
                "aa_apgd_ce": (0, 1), "aa_apgd_t": (0, 9), "aa_fab_t": (0, 9)}  # APGD-T, FAB-T: 9 target classes


def defended_units(u: dict, fwd_factor: float, grad_factor: float) -> dict:
    """Unit costs of a model whose forward passes cost `fwd_factor` and attack steps `grad_factor` times u's:
    each unit pays the extra cost of the model passes it contains."""
    out = dict(u)
    for key, (forwards, grads) in MODEL_PASSES.items():
        out[key] = u[key] + forwards * (fwd_factor - 1) * u["t_fwd"] + grads * (grad_factor - 1) * u["t_grad"]
    return out


def training_seconds_per_image(training: dict, u: dict) -> float:
    method = training["method"]
    if method == "vanilla":
        return u["t_train"]
    if method in ("pat", "alp", "sns"):
        return training.get("steps", 10) * u["t_grad"] + 2 * u["t_train"]
    if method in ("nat", "eat"):
        return u["t_grad"] + 2 * u["t_train"]
    raise ValueError(f"no cost model for training method {method}")


def units_at_flop_rate(units: dict, crown: dict, tflops: float) -> tuple[dict, dict]:
    """Unit costs of a device sustaining ``tflops`` TFLOP/s, from the counted FLOPs of each unit: forward,
    attack and training steps at that rate; C&W and AutoAttack's gradient stages scaled like the attack step,
    black-box queries, Square's and CROWN like the forward pass."""
    rate = tflops * 1e12
    gpu_units, gpu_crown = {}, {}
    for arch, u in units.items():
        g = {"t_fwd": u["flops_fwd"] / rate, "t_grad": u["flops_grad"] / rate, "t_train": u["flops_train"] / rate}
        g["pgd10_direct"] = 10 * g["t_grad"] + g["t_fwd"]
        for key in ("cw4_direct", "aa_apgd_ce", "aa_apgd_t", "aa_fab_t",
                    "aa_apgd_ce_fixed", "aa_apgd_t_fixed", "aa_fab_t_fixed"):
            g[key] = u[key] * g["t_grad"] / u["t_grad"]
        for key in ("spsa_query", "nattack_query", "aa_square", "aa_square_fixed"):
            g[key] = u[key] * g["t_fwd"] / u["t_fwd"]
        gpu_units[arch] = {**u, **g}
        if arch in crown:
            seconds, n, how = crown[arch]
            gpu_crown[arch] = (seconds * g["t_fwd"] / u["t_fwd"], n, how)
    return gpu_units, gpu_crown


def print_table(jobs, counts, title):
    by_rule = collections.defaultdict(float)
    for rule, _label, seconds in jobs:
        by_rule[rule] += seconds
    total = sum(by_rule.values())
    print(f"\n{title}")
    print(f"{'rule':24s} {'jobs':>5s} {'hours':>10s} {'share':>6s}")
    for rule, seconds in sorted(by_rule.items(), key=lambda kv: -kv[1]):
        print(f"{rule:24s} {counts.get(rule, 0):5d} {seconds / 3600:10.1f} {seconds / total:6.1%}")
    print(f"{'total':24s} {sum(counts.values()):5d} {total / 3600:10.1f}")
    return total


def comparison_key(rule: str, label: str) -> str:
    """What an estimated job is compared under: its rule, and for the robustness evaluation also its attack."""
    if rule == "evaluate_attack" and " / " in label:
        return f"{rule}: {label.split(' / ', 1)[1].split(' (')[0]}"
    return rule


def measured_key(benchmark: Path, rule: str) -> str:
    """comparison_key of a finished job, from its benchmark file (.../evaluate_attack/<model>/<attack>~id.tsv)."""
    if rule == "evaluate_attack":
        return f"{rule}: {benchmark.stem.split('~')[0]}"
    return rule


def _by_key(jobs: list[tuple], startup: float) -> dict[str, list]:
    """key -> [jobs, seconds] of estimated jobs; a rule's start-up entry adds to the rule, and every job of a
    per-attack key pays one start-up, as the rule's jobs do."""
    out = collections.defaultdict(lambda: [0, 0.0])
    for rule, label, seconds in jobs:
        if label.startswith("start-up of "):
            out[rule][1] += seconds
            continue
        out[rule][0] += 1
        out[rule][1] += seconds
        key = comparison_key(rule, label)
        if key != rule:
            out[key][0] += 1
            out[key][1] += seconds + startup
    return out


def compare_with_run(jobs: list[tuple], informed: list[tuple], run: Path, startup: float) -> None:
    """Estimated against measured job-seconds of a finished run of the same config, per rule and per attack of
    the robustness evaluation (measured: each job's wall time from its benchmark file). `jobs` is the estimate
    as made before a run; `informed` the same with the run's own attack outcomes (:func:`run_outcomes`)."""
    from run_profile import current_files, rule_families

    families = rule_families()
    measured = collections.defaultdict(lambda: [0, 0.0])
    for path in current_files((run / "benchmarks").rglob("*.tsv")):
        parts = path.relative_to(run / "benchmarks").with_suffix("").parts
        rule = next((p for p in parts if p in families), None)
        if rule is None:
            continue
        seconds = float(path.read_text().splitlines()[1].split("\t")[0])
        for key in {rule, measured_key(path, rule)}:
            measured[key][0] += 1
            measured[key][1] += seconds
    if not measured:
        raise SystemExit(f"no benchmark files of known rules under {run / 'benchmarks'}")
    before, after = _by_key(jobs, startup), _by_key(informed, startup)
    print(f"\nestimate against the run in {run}, in job-seconds. measured: each job's wall time; 'before a run': the "
          "model's own guesses of attack outcomes; 'run outcomes': AutoAttack's per-stage robust images and the "
          "black-box queries per image taken from the run. A rule with 0 estimated jobs has no unit cost in the "
          "model (start-up only).")
    print(f"{'rule / attack':34s} {'est jobs':>8s} {'run jobs':>8s} {'before a run':>12s} {'run outcomes':>12s} "
          f"{'measured':>9s} {'ratio':>6s}")
    keys = sorted(set(measured) | set(after), key=lambda k: (":" in k, -max(measured[k][1], after[k][1])))
    for key in keys:
        est, inf, (n_run, run_s) = before[key][1], after[key][1], measured[key]
        if max(est, inf, run_s) >= 1.0:
            ratio = f"{run_s / inf:6.2f}" if inf else "   -  "
            print(f"{key:34s} {after[key][0]:8d} {n_run:8d} {est:12.1f} {inf:12.1f} {run_s:9.1f} {ratio}")
    total = [sum(v[1] for k, v in table.items() if ":" not in k) for table in (before, after, measured)]
    print(f"{'total':34s} {'':8s} {'':8s} {total[0]:12.1f} {total[1]:12.1f} {total[2]:9.1f} {total[2] / total[1]:6.2f}")
    print("ratio = measured / estimate with the run's outcomes")


def step_startup_seconds(repeats: int = 3) -> float:
    """Start-up of a typical step: the imports of the evaluate_attack script and Snakemake's preamble."""
    code = PREAMBLE + script_imports(ROOT / "workflow_scripts" / "evaluate_attack.py")
    return median_time(lambda: subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT), repeats)


LOADS_A_MODEL = {"evaluate_attack", "pgd_sweep", "attack_pairs", "targeted_pairs", "sensitivity_ratios",
                 "suppression_study", "psn_scores", "psn_deviation", "meansparse_model"}


def estimate(config: dict, presets: list[Path], units: dict, crown: dict, startup: float,
             robust_fraction: float, sizes: dict[str, int],
             outcomes: dict | None = None) -> tuple[list[tuple], collections.Counter]:
    """(rule, job label, seconds) for every job of the plan that does real work, and the job counts;
    `outcomes` (:func:`run_outcomes`) replaces the robustness evaluations' guessed outcomes with a run's."""
    outcomes = outcomes or {}
    from advneurons.config import settings
    from advneurons.workflow.plan import Plan

    plan = Plan(config)
    n_train, n_val, n_test = sizes["train"], sizes["val"], sizes["test"]
    attacks = config["attacks"]

    def images(n):
        return n_test if n is None else min(n, n_test)

    def robust(entry):
        return entry["training"]["method"] not in ("vanilla",)

    def unit(model_id):
        entry = plan.evaluated.get(model_id) or plan.trained[model_id]
        u = units[entry["arch"]]
        if entry["training"]["method"] == "ig_defense":  # EOT-adaptive: every pass averages eot_samples draws
            eot = config["ig_defense"]["eot_samples"]
            return {k: v * 2 * eot for k, v in u.items()}
        if entry["training"]["method"] == "meansparse":  # its ReLUs cost extra in every pass
            return defended_units(u, u["meansparse_fwd"], u["meansparse_grad"])
        return u

    jobs = []
    for model_id, entry in plan.trained.items():
        seconds = entry["training"]["epochs"] * n_train * training_seconds_per_image(entry["training"], units[entry["arch"]])
        jobs.append(("train_model", plan.model_label(model_id), seconds))
    for model_id, entry in plan.evaluated.items():
        for name in settings.evaluated_attacks(config, entry):
            rob = plan.robustness[plan.robustness_id[name]]
            n = images(rob["n_images"])
            label = plan.model_label(model_id)
            jobs.append(("evaluate_attack", f"{label} / {name} ({n} images)",
                         n * attack_seconds(attacks[name], unit(model_id), robust(entry), robust_fraction,
                                            outcomes.get((label, name)))))
    for model_id, entry in plan.layer_range_models.items():  # SNS from other first layers: their own attacks
        for name in config["sns_layer_range"]["attacks"]:
            n = images(plan.robustness[plan.robustness_id[name]]["n_images"])
            jobs.append(("evaluate_attack", f"{plan.model_label(model_id)} / {name} ({n} images)",
                         n * attack_seconds(attacks[name], unit(model_id), robust(entry), robust_fraction,
                                            outcomes.get((plan.model_label(model_id), name)))))
    for name in config["robustness"]["table_i"]:
        if name in config["robustness"]["table_iii"].values():
            continue
        for model_id, entry in plan.analysed.items():
            n = images(plan.robustness[plan.robustness_id[name]]["n_images"])
            jobs.append(("evaluate_attack", f"{plan.model_label(model_id)} / {name} ({n} images)",
                         n * attack_seconds(attacks[name], unit(model_id), robust(entry), robust_fraction)))
    sweeps = config["sweeps"]
    if sweeps["enabled"]:
        # distinct (eps, k) points: the one both sweeps share runs once (evaluation.robustness.compute_pgd_sweep)
        points = ({(sweeps["eps"], int(k)) for k in sweeps["steps_values"]}
                  | {(e, int(sweeps["steps"])) for e in sweeps["eps_values"]})
        grads = sum(k for _, k in points)
        for model_id in (plan.evaluated if config["defenses"]["sweeps"] else plan.analysed):
            n = images(sweeps["n_images"])
            jobs.append(("pgd_sweep", plan.model_label(model_id), n * grads * unit(model_id)["t_grad"]))
    for model_id, entry in plan.analysed.items():
        u = units[entry["arch"]]
        for name in config["evaluation"]["attacks"]:
            n = images(config["evaluation"]["n_images"])
            jobs.append(("attack_pairs", f"{plan.model_label(model_id)} / {name}",
                         n * (attack_seconds(attacks[name], u, robust(entry), robust_fraction) + 2 * u["t_fwd"])))
        if plan.sns["enabled"]:
            # per target class, up to n_per_class of the test images of the other classes (about 9 in 10)
            per_class = plan.sns["targeted"]["n_per_class"]
            candidates = round(0.9 * n_test)
            n = candidates if per_class is None else min(candidates, per_class)
            steps = attacks[plan.sns["targeted"]["attack"]].get("steps", 10)
            jobs.append(("targeted_pairs", plan.model_label(model_id),
                         10 * n * (steps * u["t_grad"] + 3 * u["t_fwd"])))
            ratios = plan.sns["ratios"]
            per_image = sum(attack_seconds(a, u, False, 0) + 2 * u["t_fwd"]
                            for family in ratios["perturbations"].values() for a in family)
            jobs.append(("sensitivity_ratios", plan.model_label(model_id), images(ratios["n_images"]) * per_image))
    sup = plan.sns["suppression"]
    for model_id in plan.analysed_of(sup["training"]) if plan.sns["enabled"] else []:
        u = units[plan.analysed[model_id]["arch"]]
        # every variant (the model itself once, and each beta < 1 with the sensitive and each random selection
        # scaled) is attacked anew by every perturbation, then evaluated clean and perturbed
        variants = 1 + sum(1 for b in sup["betas"] if b != 1.0) * (1 + sup["n_random"])
        per_variant = u["t_fwd"] + sum(attack_seconds(attacks[p], u, False, 0) + u["t_fwd"] for p in sup["perturbations"])
        jobs.append(("suppression_study", plan.model_label(model_id), images(sup["n_images"]) * variants * per_variant))
    psn = plan.psn
    for model_id in plan.analysed_of(psn["training"]) if psn["enabled"] else []:
        arch = plan.analysed[model_id]["arch"]
        jobs.append(("psn_scores", f"{plan.model_label(model_id)} ({psn['n_images'][arch]} images)",
                     psn["n_images"][arch] * crown[arch][0]))
        dev = psn["deviation"]
        jobs.append(("psn_deviation", plan.model_label(model_id),
                     images(dev["n_images"]) * dev["pgd_steps"] * units[arch]["t_grad"]))
    ms = config["meansparse"]
    for model_id, entry in plan.defended.items():
        if entry["training"]["method"] != "meansparse":
            continue
        u = units[entry["arch"]]
        n = n_val if ms["n_val"] is None else min(ms["n_val"], n_val)
        per_alpha = sum(attack_seconds(attacks[a], u, True, robust_fraction) for a in ms["attacks"])
        jobs.append(("meansparse_model", plan.model_label(model_id), len(ms["alphas"]) * n * per_alpha))
    # every job of a rule that loads a model pays for loading it (the model's architecture starts its label)
    jobs = [(rule, label, seconds + units[label.split("-")[0]]["model_load"])
            if rule in LOADS_A_MODEL and label.split("-")[0] in units else (rule, label, seconds)
            for rule, label, seconds in jobs]
    counts = collections.Counter(planned_jobs(presets))
    for rule, n in counts.items():
        if rule != "all":
            jobs.append((rule, f"start-up of {n} jobs", n * startup))
    return jobs, counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["presets/cifar10_paper.yaml"],
                        help="config file(s), merged in order as Snakemake's --configfile merges them")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=None, help="images per timed batch (default 32 CPU, 256 GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--robust-fraction", type=float, default=0.5,
                        help="share of an adversarially trained model's images that survive AutoAttack's first stage")
    parser.add_argument("--psn-direct", action="store_true", help="measure CROWN at the preset's width")
    parser.add_argument("--gpu-tflops", type=float, default=None,
                        help="also estimate for a device sustaining this many TFLOP/s (from counted FLOPs), e.g. "
                             "a GPU this script cannot run on")
    parser.add_argument("--run", type=Path, default=None,
                        help="a finished run of the same config (its benchmarks/, logs/, results/): read its split "
                             "sizes and compare the estimate with its measured job-seconds")
    parser.add_argument("--startup", type=float, default=None,
                        help="a step's start-up in seconds (default: measured here in a fresh process; ~0.2 in a "
                             "local run's step server)")
    args = parser.parse_args()

    from advneurons.config import settings

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch or (256 if device.type == "cuda" else 32)
    presets = [ROOT / preset for preset in args.preset]
    for path in presets:
        if not path.is_file():
            raise SystemExit(f"--preset: no such config file: {path}")
    if args.run is not None and not (args.run / "benchmarks").is_dir():
        raise SystemExit(f"--run: {args.run} has no benchmarks/ folder (expected a finished run's working directory)")
    config = settings.validate_config(merged_config(presets))
    sizes = split_sizes(config, args.run)
    dataset = config["dataset"]["name"]
    units, crown = {}, {}
    print(f"machine: {device} ({torch.get_num_threads()} threads); preset {' + '.join(args.preset)}; "
          f"{sizes['train']} / {sizes['val']} / {sizes['test']} train / val / test images"
          + (f" (from {args.run})" if args.run else ""))
    for arch in config["models"]["architectures"]:
        width = config["architectures"][arch]["width"]
        units[arch] = unit_costs(arch, width, dataset, device, batch, args.repeats)
        u = units[arch]
        print(f"{arch} width {width:g}: per image t_fwd {u['t_fwd'] * 1e3:.2f} ms, t_grad {u['t_grad'] * 1e3:.2f} ms, "
              f"t_train {u['t_train'] * 1e3:.2f} ms; PGD-10 measured {u['pgd10_direct'] * 1e3:.1f} ms vs model "
              f"{(10 * u['t_grad'] + u['t_fwd']) * 1e3:.1f} ms; C&W 4 iterations measured {u['cw4_direct'] * 1e3:.1f} ms "
              f"(model: {4 * u['t_grad'] * 1e3:.1f} ms in gradient steps; the measured cost is used)")
        print(f"{arch}: per image and query, SPSA {u['spsa_query'] * 1e3:.2f} ms, NAttack {u['nattack_query'] * 1e3:.2f} "
              f"ms (t_fwd {u['t_fwd'] * 1e3:.2f}); per image and iteration, AutoAttack APGD-CE "
              f"{u['aa_apgd_ce'] * 1e3:.2f} ms, APGD-T {u['aa_apgd_t'] * 1e3:.2f}, FAB-T {u['aa_fab_t'] * 1e3:.2f} "
              f"(9 target classes; t_grad {u['t_grad'] * 1e3:.2f}), Square {u['aa_square'] * 1e3:.2f} ms per query; "
              f"once per stage {u['aa_apgd_ce_fixed'] * 1e3:.1f}, {u['aa_apgd_t_fixed'] * 1e3:.1f}, "
              f"{u['aa_fab_t_fixed'] * 1e3:.1f}, {u['aa_square_fixed'] * 1e3:.1f} ms; loading the model "
              f"{u['model_load']:.2f} s per job; MeanSparse's ReLUs "
              f"make a forward pass {u['meansparse_fwd']:.2f}x and an attack step {u['meansparse_grad']:.2f}x as costly")
        if config["psn"]["enabled"]:
            psn = config["psn"]
            crown[arch] = crown_per_image(arch, width, dataset, psn["nodes"], psn["eps"] / 255, psn["mem_budget_mb"],
                                          args.psn_direct, psn.get("last_nodes"))
            seconds, n, how = crown[arch]
            print(f"{arch}: PSN CROWN {seconds:.1f} s per image over {n} nodes ({seconds / n:.2f} s per image and "
                  f"node), {how}")
    if args.startup is None:
        startup = step_startup_seconds()
        print(f"start-up of a step (imports + Snakemake preamble): {startup:.1f} s")
    else:
        startup = args.startup
        print(f"start-up of a step: {startup:g} s (given)")
    jobs, counts = estimate(config, presets, units, crown, startup, args.robust_fraction, sizes)
    print_table(jobs, counts, f"{sum(counts.values())} jobs planned (snakemake -n -F). Estimated device-hours by "
                              "rule on this machine:")
    if args.gpu_tflops:
        for arch, u in units.items():
            print(f"{arch}: {u['flops_fwd'] / 1e9:.2f} GFLOP forward, {u['flops_grad'] / 1e9:.2f} attack step, "
                  f"{u['flops_train'] / 1e9:.2f} training step per image")
        gpu_units, gpu_crown = units_at_flop_rate(units, crown, args.gpu_tflops)
        gpu_jobs, _ = estimate(config, presets, gpu_units, gpu_crown, startup, args.robust_fraction, sizes)
        print_table(gpu_jobs, counts, f"Estimated hours on one device sustaining {args.gpu_tflops:g} TFLOP/s in "
                                      "convolutions and matrix products (an assumption, not a measurement; job "
                                      "start-up as measured here):")
    print("\nbiggest jobs:")
    for rule, label, seconds in sorted(jobs, key=lambda j: -j[2])[:8]:
        print(f"  {seconds / 3600:8.1f} h  {rule}: {label}")
    print(f"\nassumptions: AutoAttack's later stages run on {args.robust_fraction:.0%} of an adversarially trained "
          "model's images (none of a vanilla one's); IG-Defense passes cost 2 x eot_samples plain ones; table, "
          "figure and report steps cost their start-up only; training epochs cost epochs x training images.")
    if args.run is not None:
        informed, _ = estimate(config, presets, units, crown, startup, args.robust_fraction, sizes,
                               run_outcomes(args.run))
        compare_with_run(jobs, informed, args.run, startup)


if __name__ == "__main__":
    main()
