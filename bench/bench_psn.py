"""Benchmark of PSN scoring (advneurons.psn.scores), ratios measured in one run with alternating repeats.

(i)   CROWN mode (all scored layers, one image) vs a single full-network CROWN bound of the model output
      for the same image: target ratio <= 2; peak memory (VmHWM increase) vs the memory budget.
(ii)  CROWN-IBP mode vs CROWN mode: the brief's target is >= 20x faster. Also timed: the CROWN-IBP
      pass alone (IBP intermediates + the logits' backward pass = the after term only), which is where
      CROWN-IBP's savings lie; the before term needs a backward pass per scored layer either way.
(iii) Stability: top-1% Jaccard per layer between the scores of two disjoint image subsets of size n.
(iv)  --node-sets: the cost per image of scoring every graph node (psn.nodes: all, the reference's choice)
      relative to the ReLU inputs, with the shared backward passes (PSNBounder.derivation_plan) and
      without them (one pass per node).
(v)   --scaling: time and peak memory per image of PSN CROWN for VGG16 and ResNet18 at several widths
      (untrained models: the cost does not depend on the weights), and a power-law fit extrapolated to
      width 1, the paper preset's.

Usage: .venv/bin/python bench/bench_psn.py [--arch vgg16] [--model results/.../model.pt] [--n-stability 4]
       .venv/bin/python bench/bench_psn.py --node-sets [--arch resnet18]
       .venv/bin/python bench/bench_psn.py --scaling --widths 0.0625 0.125 0.25 [--nodes all]
By default it uses the trained digits checkpoint of the architecture under results/ if there is one,
else an untrained model (build_model(arch, 'digits', width)), and the digits test split.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from advneurons.psn.lirpa_compat import bounded_module, linf_bounds
from advneurons.models.architectures import build_model
from advneurons.psn.scores import (
    PSNBounder,
    compute_terms,
    layer_activations,
    score_table,
    scored_layers,
    select_images,
    top_units_table,
)
from advneurons.runtime import setup


# ---------------------------------------------------------------------------------------- memory
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class PeakRSS:
    """Peak resident memory increase during a block, in MB.

    Resets the kernel's high-water mark (VmHWM) through /proc/self/clear_refs where allowed, else
    samples VmRSS every 2 ms in a thread.
    """

    def __enter__(self):
        self.start = _status_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.sampler = None
        except OSError:
            self.peak, self.stop = self.start, False

            def sample():
                while not self.stop:
                    self.peak = max(self.peak, _status_kb("VmRSS"))
                    time.sleep(0.002)

            self.sampler = threading.Thread(target=sample, daemon=True)
            self.sampler.start()
        return self

    def __exit__(self, *exc):
        if self.sampler is None:
            peak = _status_kb("VmHWM")
        else:
            self.stop = True
            self.sampler.join()
            peak = self.peak
        self.mb = max(0, peak - self.start) / 1024.0


def timed(fn):
    with PeakRSS() as mem:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return seconds, mem.mb


# ---------------------------------------------------------------------------------------- inputs
def load_inputs(arch: str, width: float, model_path: str | None, test_path: str | None):
    from advneurons.models.checkpoint import load_model
    from advneurons.data import load_split, prepare_digits

    if model_path is None:
        found = sorted(glob.glob(f"results/digits*/models/{arch}-vanilla*/model.pt"))
        model_path = found[0] if found else None
    if model_path:
        model, ckpt = load_model(model_path)
        label = f"{model_path} (trained {ckpt['arch']}, width {ckpt['width']})"
    else:
        torch.manual_seed(0)
        model = build_model(arch, "digits", width=width).eval()
        label = f"untrained build_model({arch!r}, 'digits', width={width})"
    if test_path is None:
        found = sorted(glob.glob("results/digits*/data/test.npz"))
        test_path = found[0] if found else None
    if test_path:
        images, labels = load_split(Path(test_path))
    else:
        split = prepare_digits(0.2, 0.1, 0)["test"]
        images = torch.from_numpy(split.images.astype(np.float32) / 255.0)
        labels = torch.from_numpy(split.labels)
    return model.eval(), label, images, labels


# ---------------------------------------------------------------------------------------- (iv), (v)
def node_set_costs(model, x, eps, budget_mb, repeats):
    """(iv): seconds per image of relu_inputs, all (shared passes), all (a pass per node), alternating."""
    bounders = {
        "relu_inputs": (PSNBounder(model, x, "CROWN", budget_mb, scored_layers(model, "relu_inputs")), True),
        "all, shared passes": (PSNBounder(model, x, "CROWN", budget_mb, scored_layers(model, "all")), True),
    }
    bounders["all, a pass per node"] = (bounders["all, shared passes"][0], False)
    jobs = {name: (lambda b=b, share=share: b.terms(x, eps, share=share)) for name, (b, share) in bounders.items()}
    for fn in jobs.values():
        fn()
    times = {k: [] for k in jobs}
    peaks = {k: [] for k in jobs}
    names = list(jobs)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            sec, mb = timed(jobs[name])
            times[name].append(sec)
            peaks[name].append(mb)
    base = bounders["all, shared passes"][0]
    print(f"\n(iv) node sets (CROWN, one image): relu_inputs {len(bounders['relu_inputs'][0].node_of)} nodes, "
          f"all {len(base.node_of)} nodes, {len(base.derivation_plan())} of them from shared passes")
    for name in names:
        ratio = [t / b for t, b in zip(times[name], times["relu_inputs"])]
        print(f"  {name:24s} {statistics.median(times[name]):8.2f} s  peak +{max(peaks[name]):.0f} MB  "
              f"x{statistics.median(ratio):.2f} of relu_inputs (per repeat {', '.join(f'{v:.2f}' for v in ratio)})")


def width_scaling(archs, widths, eps, budget_mb, nodes, threads):
    """(v): seconds and peak memory per image by architecture and width; log-log fit to width 1."""
    torch.manual_seed(0)
    split = __import__("advneurons.data", fromlist=["prepare_digits"]).prepare_digits(0.2, 0.1, 0)["test"]
    x = torch.from_numpy(split.images[:1].astype(np.float32) / 255.0)
    print(f"\n(v) PSN CROWN per image, nodes={nodes}, eps {eps * 255:g}/255, budget {budget_mb:g} MB, "
          f"{threads} threads (untrained models)")
    for arch in archs:
        rows = []
        for width in widths:
            model = build_model(arch, "digits", width=width).eval()
            bounder = PSNBounder(model, x, "CROWN", budget_mb, scored_layers(model, nodes))
            sec, mb = timed(lambda: bounder.terms(x, eps))
            rows.append((width, sec, mb))
            print(f"  {arch:9s} width {width:<6g} {sec:8.1f} s   peak +{mb:.0f} MB", flush=True)
        if len(rows) >= 2:
            w = np.log([r[0] for r in rows])
            slope, icpt = np.polyfit(w, np.log([r[1] for r in rows]), 1)
            mslope, micpt = np.polyfit(w, np.log([max(r[2], 1.0) for r in rows]), 1)
            print(f"  {arch:9s} fit: time ~ width^{slope:.2f}; width 1 -> {np.exp(icpt):.0f} s "
                  f"({np.exp(icpt) / 3600:.2f} h) per image on this machine; peak memory ~ width^{mslope:.2f}, "
                  f"width 1 -> {np.exp(micpt):.0f} MB (the budget caps the chunk size, so memory grows slower)")


# ---------------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vgg16", choices=("vgg16", "resnet18"))
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--model", default=None, help="checkpoint (default: trained digits model under results/)")
    ap.add_argument("--untrained", action="store_true", help="ignore checkpoints under results/")
    ap.add_argument("--test", default=None, help="test split .npz (default: results/digits*/data/test.npz)")
    ap.add_argument("--eps", type=float, default=32.0, help="ball radius in 1/255 units (32: the digits counterpart of 8)")
    ap.add_argument("--budget-mb", type=float, default=1024.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up call of each job (slow models)")
    ap.add_argument("--n-stability", type=int, default=2, help="images per subset for (iii); 0 skips it")
    ap.add_argument("--stability-method", default="CROWN", choices=("CROWN", "CROWN-IBP"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--node-sets", action="store_true", help="only (iv): cost of nodes=all vs relu_inputs")
    ap.add_argument("--scaling", action="store_true", help="only (v): time and memory by architecture and width")
    ap.add_argument("--widths", type=float, nargs="+", default=[0.0625, 0.125, 0.25])
    ap.add_argument("--archs", nargs="+", default=["vgg16", "resnet18"], choices=("vgg16", "resnet18"))
    ap.add_argument("--nodes", default="relu_inputs", choices=("relu_inputs", "all"))
    args = ap.parse_args(argv)

    setup(args.threads, args.seed)
    if args.scaling:
        width_scaling(args.archs, args.widths, args.eps / 255.0, args.budget_mb, args.nodes, args.threads)
        return 0
    model_path = args.model if not args.untrained else ""
    model, label, images, labels = load_inputs(args.arch, args.width, model_path, args.test)
    eps = args.eps / 255.0
    x = images[:1]
    print(f"model: {label}")
    print(f"threads {args.threads}, eps {args.eps:g}/255, memory budget {args.budget_mb:g} MB, repeats {args.repeats}")
    if args.node_sets:
        node_set_costs(model, x, eps, args.budget_mb, args.repeats)
        return 0

    t0 = time.perf_counter()
    full = bounded_module(model, x, bound_opts={"sparse_intermediate_bounds": False})
    crown = PSNBounder(model, x, "CROWN", args.budget_mb)
    ibp = PSNBounder(model, x, "CROWN-IBP", args.budget_mb)
    print(f"setup (3 x auto_LiRPA tracing): {time.perf_counter() - t0:.1f} s")
    n_units = sum(int(np.prod(a.shape[1:])) for a in layer_activations(model, x, crown.layers).values())
    print(f"scored layers: {len(crown.node_of)}, units: {n_units}, rows per chunk: "
          f"{ {n: crown.rows_per_chunk(node, 1) for n, node in crown.node_of.items()} }")

    jobs = {
        "full CROWN (output only)": lambda: linf_bounds(full, x, eps, "CROWN"),
        "PSN CROWN (all layers)": lambda: crown.terms(x, eps),
        "PSN CROWN-IBP (all layers)": lambda: ibp.terms(x, eps),
        "CROWN-IBP output pass only": lambda: linf_bounds(full, x, eps, "CROWN-IBP"),
    }
    if not args.no_warmup:
        for fn in jobs.values():  # warm-up (first calls build caches)
            fn()
    times = {k: [] for k in jobs}
    peaks = {k: [] for k in jobs}
    names = list(jobs)
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:  # alternate the order between repeats
            sec, mb = timed(jobs[name])
            times[name].append(sec)
            peaks[name].append(mb)
    print("\nseconds per image (median of repeats) and peak RSS increase:")
    for name in names:
        print(f"  {name:30s} {statistics.median(times[name]):8.2f} s   [{', '.join(f'{t:.2f}' for t in times[name])}]"
              f"   peak +{max(peaks[name]):.0f} MB")
    per_rep = lambda a, b: [ta / tb for ta, tb in zip(times[a], times[b])]  # noqa: E731
    r1 = per_rep("PSN CROWN (all layers)", "full CROWN (output only)")
    r2 = per_rep("PSN CROWN (all layers)", "PSN CROWN-IBP (all layers)")
    r3 = per_rep("PSN CROWN (all layers)", "CROWN-IBP output pass only")
    print(f"\n(i)  PSN CROWN / full CROWN time ratio: median {statistics.median(r1):.2f} "
          f"(per repeat {', '.join(f'{v:.2f}' for v in r1)}; target <= 2)")
    print(f"     PSN CROWN peak memory +{max(peaks['PSN CROWN (all layers)']):.0f} MB vs budget {args.budget_mb:g} MB")
    print(f"(ii) CROWN-IBP speed-up over CROWN (PSN, all layers): median {statistics.median(r2):.2f}x "
          f"(per repeat {', '.join(f'{v:.2f}' for v in r2)}; target >= 20x)")
    print(f"     for reference, PSN CROWN / CROWN-IBP output pass alone (after term only): median {statistics.median(r3):.1f}x")

    if args.n_stability > 0:
        n = args.n_stability
        index = select_images(len(images), 2 * n, args.seed)
        perm = torch.randperm(len(index), generator=torch.Generator().manual_seed(args.seed)).numpy()
        halves = [index[np.sort(perm[:n])], index[np.sort(perm[n:])]]
        bounder = crown if args.stability_method == "CROWN" else ibp
        start = time.perf_counter()
        tables = [score_table(compute_terms(bounder, images[h], eps, progress=False), bounder.layers) for h in halves]
        seconds = time.perf_counter() - start
        tops = [top_units_table(t, 1.0) for t in tables]
        rows = []
        for layer in bounder.layers:
            sets = [set(zip(*(t[t.layer == layer][c] for c in ("channel", "h", "w")))) for t in tops]
            total = int((tables[0].layer == layer).sum())
            k = len(sets[0])
            rows.append((layer, k, total, len(sets[0] & sets[1]) / len(sets[0] | sets[1])))
        print(f"\n(iii) top-1% Jaccard between two disjoint subsets of {n} images ({args.stability_method}, "
              f"{seconds:.0f} s for {2 * n} images = {seconds / (2 * n):.1f} s/image):")
        for layer, k, total, jac in rows:
            chance = k / (2 * total - k)
            print(f"  {layer:8s} k={k:4d}/{total:6d}  Jaccard {jac:.3f}   (random sets: ~{chance:.3f})")
        print(f"  mean Jaccard over layers: {np.mean([r[3] for r in rows]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
