"""The neuron-sensitivity pass against its physical limit: two plain forward passes over the same pairs.

Target (issue 16): `compute_neuron_sensitivity` over N pairs takes at most 1.25x the time of a forward pass of
the clean images plus one of the perturbed images (a hooked pass cannot be cheaper than the passes it hooks).
Both run on one thread, in the same batches, alternating, `--repeats` times; the medians and their ratio are
printed. Default: VGG16 and ResNet18 at the default width (1/8) on 3x32x32 inputs, 200 pairs, batch 100.

Run:  .venv/bin/python bench/bench_sensitivity_pass.py [--width 0.125] [--pairs 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

TARGET_RATIO = 1.25


def main():
    from advneurons.evaluation.sensitivity import compute_neuron_sensitivity
    from advneurons.models.architectures import build_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(args.pairs, 3, 32, 32, generator=gen)
    perturbed = (clean + 0.03 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
    batches = [(clean[i:i + args.batch_size], perturbed[i:i + args.batch_size])
               for i in range(0, args.pairs, args.batch_size)]
    for arch in ("vgg16", "resnet18"):
        model = build_model(arch, "digits", width=args.width).eval()

        @torch.no_grad()
        def plain():
            for c, p in batches:
                model(c)
                model(p)

        def hooked():
            compute_neuron_sensitivity(model, batches)

        plain(), hooked()  # warm-up
        t = {"plain": [], "hooked": []}
        for _ in range(args.repeats):
            for name, fn in (("plain", plain), ("hooked", hooked)):
                start = time.perf_counter()
                fn()
                t[name].append(time.perf_counter() - start)
        p, h = statistics.median(t["plain"]), statistics.median(t["hooked"])
        print(f"{arch} width {args.width:g}, {args.pairs} pairs: two plain passes {p:.3f} s, sensitivity pass "
              f"{h:.3f} s, ratio {h / p:.2f} (target <= {TARGET_RATIO})")


if __name__ == "__main__":
    main()
