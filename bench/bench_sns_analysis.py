"""Cost of the SNS analyses at the default digits settings, projected to the 4-model run on 2 cores.

Target (issue brief): all new analyses for the 4 default models (VGG16 / ResNet18 at width 0.125, vanilla and
PAT) in about 10 minutes on 2 cores. Each step runs on one thread, as the workflow runs them, for one VGG16 and
one ResNet18 (untrained unless --models points at a results/<data>/models directory; the cost is the same, only
the number of successful targeted pairs differs). The projection counts every step twice per architecture
(vanilla and PAT) and divides by the 2 cores; it is printed from wall time and from the process's CPU time (the
latter is what the steps need when they have a core each, as in the workflow).

Run:  .venv/bin/python bench/bench_sns_analysis.py [--models results/digits~XXXX/models] [--test test.npz]
Prints the seconds per step and the ratio projected / budget (below 1 meets the target). Timings on a shared
machine are noisy; the ratio is what to compare.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

BUDGET_S = 600.0


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) since `start`."""
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


def main():
    from advneurons.sns import importance, ratios, similarity, suppression
    from advneurons.models.checkpoint import save_model
    from advneurons.data import Split, load_digits_images, save_split
    from advneurons.models.architectures import build_model
    from advneurons.evaluation.pairs import generate_pairs, save_pairs
    from advneurons.attacks import AttackSpec
    from advneurons.runtime import setup
    from advneurons.evaluation.sensitivity import compute_neuron_sensitivity, sensitivity_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="results/<data>/models directory with trained models")
    parser.add_argument("--test", type=Path, help="test split file (default: 360 digits)")
    args = parser.parse_args()
    setup(1, seed=0)
    work = Path(tempfile.mkdtemp(prefix="bench_sns_"))
    if args.test:
        test = args.test
    else:
        images, labels = load_digits_images()
        test = work / "test.npz"
        save_split(Split(images[:360], labels[:360]), test)

    pgd = {"type": "pgd", "eps": 32, "steps": 10}
    suppress = {
        "linf_pgd": pgd,
        "l2_pgd": {"type": "pgd_l2", "eps": 320, "steps": 10},  # the papers' 80 (0..255 scale) times 4 on digits
        "fgsm": {"type": "fgsm", "eps": 32},
        "gaussian": {"type": "gaussian", "severity": 3},
    }
    ratio_families = {
        "linf_pgd": [{"type": "pgd", "eps": 4 * e, "steps": 10} for e in range(1, 9)],
        "gaussian": [{"type": "gaussian", "severity": s} for s in range(1, 6)],
    }
    times: dict[str, dict[str, tuple[float, float]]] = {}
    for arch in ("vgg16", "resnet18"):
        if args.models:
            model_path = next(p for p in sorted(args.models.glob(f"{arch}-vanilla*/model.pt")))
        else:
            torch.manual_seed(0)
            model = build_model(arch, "digits", 0.125).eval()
            model_path = work / f"{arch}.pt"
            save_model(model, model_path, arch, "digits", 0.125, 10, {})
        from advneurons.models.checkpoint import load_model
        from advneurons.data import load_split

        model, _ = load_model(model_path)
        x, y = load_split(test)
        pairs = generate_pairs(model, x, y, AttackSpec.from_config(pgd), None, 0, 256)
        save_pairs(pairs, work / f"{arch}_pairs.npz")
        sens_csv = work / f"{arch}_sens.csv"
        sensitivity_table(compute_neuron_sensitivity(model, pairs.batches(256))).to_csv(sens_csv, index=False)

        t = times.setdefault(arch, {})
        o = work / arch
        start = clock()
        importance.targeted_pairs(model_path, test, pgd, 40, 0, 256, o / "tp.npz", o / "tp.json")
        t["targeted_pairs (40/class)"] = since(start)
        start = clock()
        importance.targeted_neurons(model_path, o / "tp.npz", 20, 256, o / "ts.csv", o / "ti.csv", o / "tn.json")
        similarity.importance_report(
            o / "ts.csv", o / "ti.csv", 20, o / "i.csv", o / "i.md", o / "is.csv", o / "i.png", o / "i.json"
        )
        similarity.layer_similarity(o / "ts.csv", 10, o / "l.csv", o / "l.md", o / "l.png", o / "l.json")
        t["neuron tables + reports"] = since(start)
        start = clock()
        suppression.suppression_study(
            model_path,
            test,
            sens_csv,
            suppress,
            o / "s.csv",
            o / "ss.csv",
            o / "s.md",
            o / "s.png",
            o / "s.json",
            n_images=200,
        )
        t["suppression_study (200 images, 4 attacks)"] = since(start)
        start = clock()
        ratios.sensitivity_ratios(model_path, test, ratio_families, o / "r.csv", o / "r.json", n_images=200)
        t["sensitivity_ratios (8 PGD + 5 noise)"] = since(start)

    print(f"{'step':45s} {'vgg16 wall/cpu s':>17s} {'resnet18 wall/cpu s':>20s}")
    for step in times["vgg16"]:
        v, r = times["vgg16"][step], times["resnet18"][step]
        print(f"{step:45s} {v[0]:8.1f}/{v[1]:7.1f} {r[0]:11.1f}/{r[1]:7.1f}")
    for i, kind in enumerate(("wall", "cpu")):
        per_arch = {arch: sum(t[i] for t in steps.values()) for arch, steps in times.items()}
        projected = 2 * sum(per_arch.values()) / 2  # vanilla + PAT per architecture, spread over 2 cores
        print(
            f"{kind}: one model vgg16 {per_arch['vgg16']:.1f} s, resnet18 {per_arch['resnet18']:.1f} s; "
            f"projected 4 models on 2 cores {projected:.0f} s; budget {BUDGET_S:.0f} s; ratio {projected / BUDGET_S:.2f}"
        )
    print(
        "(cpu = this process's CPU time, one thread: what the steps need on a core of their own; wall includes "
        "waiting for a shared machine)"
    )


if __name__ == "__main__":
    main()
