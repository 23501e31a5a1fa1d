"""Cost model of a preset: measured per-unit costs of its heavy steps times the preset's own counts.

On whatever machine runs it, this measures at the preset's widths (full width for the paper preset):
  * t_fwd   forward pass per image (eval mode, no gradient),
  * t_grad  one attack step per image (forward + backward to the input, eval mode),
  * t_train one training step per image (forward + backward + SGD step, train mode),
  * CROWN   PSN scoring per image of every scored node (auto_LiRPA), measured at two small widths and
            extrapolated by a power law to the preset's width (CROWN at full width takes minutes per image on
            a CPU; `--psn-direct` measures it at the preset's width instead),
and checks the model against a direct run of PGD-10 per image (C&W's iterations, which cost more than a
gradient step, are timed directly). Every job of the preset's
plan (advneurons.workflow.plan, the DAG's own registries) then gets an estimate from its counts: epochs x
training images x the method's cost per image (PAT / ALP / SNS: PGD-k + two training passes; NAT / EAT: one
Step-LL gradient + two passes), images x attack cost (PGD-k: k gradients; C&W: binary-search steps x iterations;
SPSA / NAttack: iterations x samples forwards; AutoAttack: APGD-CE, then APGD-T, FAB-T and Square for the
images still robust, `--robust-fraction` of them for adversarially trained models), and so on; every job also
pays the measured start-up of a step. It prints estimated hours per rule and in total, and the biggest jobs.

Run:  .venv/bin/python bench/preset_cost.py [--preset presets/cifar10_paper.yaml] [--device cpu] [--threads 2]
It takes a few minutes on 2 CPU cores (full-width VGG16 and ResNet18). The figures are estimates from
measured unit costs, not a run of the preset; the assumptions are printed with them.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from step_overhead import PREAMBLE, planned_jobs, script_imports  # bench/ is on the path of a script run in it

ROOT = Path(__file__).resolve().parents[1]
# Images per split of each dataset (CIFAR-10: the official 50000 / 10000; digits: scikit-learn's 1797).
DATASET_IMAGES = {"cifar10": {"train_pool": 50000, "test": 10000}, "digits": {"train_pool": None, "test": None}}
AUTOATTACK_ITERS = {"apgd_ce": 100, "apgd_t": 9 * 100, "fab_t": 9 * 100, "square": 5000}


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
    """Seconds per image of a forward pass, an attack step and a training step of one architecture."""
    import torch.nn.functional as F

    from advneurons.attacks import AttackSpec, run_attack
    from advneurons.models.architectures import build_model
    from advneurons.runtime import fast_batch, fast_layout

    # in the layout the workflow's trainings and evaluations run in (channels_last, where runtime.fast_layout uses it)
    model = fast_layout(build_model(arch, dataset, width=width).to(device))
    x = fast_batch(torch.rand(batch, 3, 32, 32, device=device), model)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def forward():
        model.eval()
        with torch.no_grad():
            model(x)
        sync(device)

    def grad_step():
        model.eval()
        xa = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
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
    out["pgd10_direct"] = median_time(lambda: (run_attack(pgd, model, x, y), sync(device)), 1) / batch
    cw = AttackSpec("cw_l2", steps=4, search_steps=1)
    out["cw4_direct"] = median_time(lambda: (run_attack(cw, model, x, y), sync(device)), 1) / batch
    return out


def crown_per_image(arch: str, width: float, dataset: str, nodes: str, eps: float, budget_mb: float,
                    direct: bool) -> tuple[float, int, str]:
    """Seconds of PSN CROWN scoring per image (all scored nodes), the number of nodes, and how it was got."""
    from advneurons.models.architectures import build_model
    from advneurons.psn.scores import PSNBounder, scored_layers

    def measure(w):
        model = build_model(arch, dataset, width=w).eval()
        x = torch.rand(1, 3, 32, 32)
        layers = scored_layers(model, nodes)
        bounder = PSNBounder(model, x, "CROWN", budget_mb, layers)
        start = time.perf_counter()
        with torch.no_grad():
            bounder.terms(x, eps)
        return time.perf_counter() - start, len(layers)

    if direct:
        seconds, n = measure(width)
        return seconds, n, f"measured at width {width:g}"
    small = [width / 8, width / 4]
    (s1, n), (s2, _) = measure(small[0]), measure(small[1])
    import math

    power = math.log(s2 / s1) / math.log(small[1] / small[0])
    seconds = s2 * (width / small[1]) ** power
    return seconds, n, f"extrapolated from widths {small[0]:g}, {small[1]:g} (time ~ width^{power:.2f})"


def attack_seconds(attack: dict, u: dict, robust: bool, robust_fraction: float) -> float:
    """Seconds per image of one attack entry (config units) on a model with unit costs `u`."""
    t = attack["type"]
    if t in ("fgsm", "step_ll"):
        return u["t_grad"]
    if t in ("pgd", "pgd_l2", "pgd_targeted", "mifgsm"):
        return attack.get("steps", 10) * u["t_grad"] + u["t_fwd"]
    if t == "cw_l2":  # an iteration costs more than a gradient step (Adam, bookkeeping): measured directly
        return attack.get("search_steps", 3) * attack.get("steps", 300) * u["cw4_direct"] / 4
    if t in ("gaussian", "uniform"):
        return u["t_fwd"]
    if t == "spsa":
        return attack.get("steps", 100) * attack.get("samples", 512) * u["t_fwd"]
    if t == "nattack":
        return attack.get("steps", 100) * attack.get("samples", 300) * u["t_fwd"]
    if t == "autoattack":  # the standard version's counts unless the entry cuts them (steps, queries)
        iters = attack.get("steps") or AUTOATTACK_ITERS["apgd_ce"]
        queries = attack.get("queries") or AUTOATTACK_ITERS["square"]
        first = iters * u["t_grad"]
        rest = 2 * 9 * iters * u["t_grad"] + queries * u["t_fwd"]  # APGD-T and FAB-T: 9 target classes each
        return first + (robust_fraction * rest if robust else 0.0)
    raise ValueError(f"no cost model for attack type {t}")


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
    attack and training steps at that rate; C&W and CROWN scaled like the attack step and the forward pass."""
    rate = tflops * 1e12
    gpu_units, gpu_crown = {}, {}
    for arch, u in units.items():
        g = {"t_fwd": u["flops_fwd"] / rate, "t_grad": u["flops_grad"] / rate, "t_train": u["flops_train"] / rate}
        g["pgd10_direct"] = 10 * g["t_grad"] + g["t_fwd"]
        g["cw4_direct"] = u["cw4_direct"] * g["t_grad"] / u["t_grad"]
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


def step_startup_seconds(repeats: int = 3) -> float:
    """Start-up of a typical step: the imports of the evaluate_attack script and Snakemake's preamble."""
    code = PREAMBLE + script_imports(ROOT / "workflow_scripts" / "evaluate_attack.py")
    return median_time(lambda: subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT), repeats)


def estimate(config: dict, preset: Path, units: dict, crown: dict, startup: float,
             robust_fraction: float) -> tuple[list[tuple], collections.Counter]:
    """(rule, job label, seconds) for every job of the plan that does real work, and the job counts."""
    from advneurons.config import settings
    from advneurons.workflow.plan import Plan

    plan = Plan(config)
    ds = config["dataset"]
    sizes = DATASET_IMAGES[ds["name"]]
    if sizes["train_pool"] is None:
        raise SystemExit("the cost model covers CIFAR-10 presets (official split sizes)")
    n_train = round(sizes["train_pool"] * (1 - ds["val_fraction"]))
    n_val, n_test = sizes["train_pool"] - n_train, sizes["test"]
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
        return u

    jobs = []
    for model_id, entry in plan.trained.items():
        seconds = entry["training"]["epochs"] * n_train * training_seconds_per_image(entry["training"], units[entry["arch"]])
        jobs.append(("train_model", plan.model_label(model_id), seconds))
    for model_id, entry in plan.evaluated.items():
        for name in settings.evaluated_attacks(config, entry):
            rob = plan.robustness[plan.robustness_id[name]]
            n = images(rob["n_images"])
            jobs.append(("evaluate_attack", f"{plan.model_label(model_id)} / {name} ({n} images)",
                         n * attack_seconds(attacks[name], unit(model_id), robust(entry), robust_fraction)))
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
            per_class = plan.sns["targeted"]["n_per_class"]
            n = n_test if per_class is None else min(n_test, 10 * per_class)
            steps = attacks[plan.sns["targeted"]["attack"]].get("steps", 10)
            jobs.append(("targeted_pairs", plan.model_label(model_id), n * 9 * steps * u["t_grad"]))
            ratios = plan.sns["ratios"]
            per_image = sum(attack_seconds(a, u, False, 0) + 2 * u["t_fwd"]
                            for family in ratios["perturbations"].values() for a in family)
            jobs.append(("sensitivity_ratios", plan.model_label(model_id), images(ratios["n_images"]) * per_image))
    sup = plan.sns["suppression"]
    for model_id in plan.analysed_of(sup["training"]) if plan.sns["enabled"] else []:
        u = units[plan.analysed[model_id]["arch"]]
        per_image = sum(attack_seconds(attacks[p], u, False, 0) + len(sup["betas"]) * (2 + sup["n_random"]) * u["t_fwd"]
                        for p in sup["perturbations"])
        jobs.append(("suppression_study", plan.model_label(model_id), images(sup["n_images"]) * per_image))
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
    counts = collections.Counter(planned_jobs(preset))
    for rule, n in counts.items():
        if rule != "all":
            jobs.append((rule, f"start-up of {n} jobs", n * startup))
    return jobs, counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="presets/cifar10_paper.yaml")
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
    args = parser.parse_args()

    from advneurons.config import settings

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch or (256 if device.type == "cuda" else 32)
    config = settings.validate_config(yaml.safe_load((ROOT / args.preset).read_text()))
    dataset = config["dataset"]["name"]
    units, crown = {}, {}
    print(f"machine: {device} ({torch.get_num_threads()} threads); preset {args.preset}")
    for arch in config["models"]["architectures"]:
        width = config["architectures"][arch]["width"]
        units[arch] = unit_costs(arch, width, dataset, device, batch, args.repeats)
        u = units[arch]
        print(f"{arch} width {width:g}: per image t_fwd {u['t_fwd'] * 1e3:.2f} ms, t_grad {u['t_grad'] * 1e3:.2f} ms, "
              f"t_train {u['t_train'] * 1e3:.2f} ms; PGD-10 measured {u['pgd10_direct'] * 1e3:.1f} ms vs model "
              f"{(10 * u['t_grad'] + u['t_fwd']) * 1e3:.1f} ms; C&W 4 iterations measured {u['cw4_direct'] * 1e3:.1f} ms "
              f"(model: {4 * u['t_grad'] * 1e3:.1f} ms in gradient steps; the measured cost is used)")
        if config["psn"]["enabled"]:
            psn = config["psn"]
            crown[arch] = crown_per_image(arch, width, dataset, psn["nodes"], psn["eps"] / 255, psn["mem_budget_mb"],
                                          args.psn_direct)
            seconds, n, how = crown[arch]
            print(f"{arch}: PSN CROWN {seconds:.1f} s per image over {n} nodes ({seconds / n:.2f} s per image and "
                  f"node), {how}")
    startup = step_startup_seconds()
    print(f"start-up of a step (imports + Snakemake preamble): {startup:.1f} s")
    jobs, counts = estimate(config, ROOT / args.preset, units, crown, startup, args.robust_fraction)
    print_table(jobs, counts, f"{sum(counts.values())} jobs planned (snakemake -n -F). Estimated device-hours by "
                              "rule on this machine:")
    if args.gpu_tflops:
        for arch, u in units.items():
            print(f"{arch}: {u['flops_fwd'] / 1e9:.2f} GFLOP forward, {u['flops_grad'] / 1e9:.2f} attack step, "
                  f"{u['flops_train'] / 1e9:.2f} training step per image")
        gpu_units, gpu_crown = units_at_flop_rate(units, crown, args.gpu_tflops)
        gpu_jobs, _ = estimate(config, ROOT / args.preset, gpu_units, gpu_crown, startup, args.robust_fraction)
        print_table(gpu_jobs, counts, f"Estimated hours on one device sustaining {args.gpu_tflops:g} TFLOP/s in "
                                      "convolutions and matrix products (an assumption, not a measurement; job "
                                      "start-up as measured here):")
    print("\nbiggest jobs:")
    for rule, label, seconds in sorted(jobs, key=lambda j: -j[2])[:8]:
        print(f"  {seconds / 3600:8.1f} h  {rule}: {label}")
    print(f"\nassumptions: AutoAttack's later stages run on {args.robust_fraction:.0%} of an adversarially trained "
          "model's images (none of a vanilla one's); IG-Defense passes cost 2 x eot_samples plain ones; table, "
          "figure and report steps cost their start-up only; training epochs cost epochs x training images.")


if __name__ == "__main__":
    main()
