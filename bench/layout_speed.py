"""What channels_last buys on this machine: the contiguous layout's time over channels_last's for a training
step, an attack's gradient step and a forward pass of each architecture, measured in one run.

runtime.fast_layout puts every model in channels_last (on the CPU too, except a model with a convolution that
oneDNN crashes on in that layout: runtime.channels_last_hazard). This prints the ratio that decision rests on,
for the machine that runs it: the two layouts' steps alternate, `--repeats` times each, so that load on a shared
machine hits both alike; the fastest and slowest repeat of each are dropped and the rest averaged. A ratio above
1 means channels_last is faster. Models whose layout fast_layout keeps contiguous are reported as such.

Run:  .venv/bin/python bench/layout_speed.py [--width 0.125] [--threads 1] [--repeats 6]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from advneurons import runtime
from advneurons.models.architectures import build_model

STEPS = {"train": 128, "attack": 64, "forward": 256}  # step -> batch size


def run_step(step: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    if step == "train":
        model.train()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    elif step == "attack":
        model.eval()
        x = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(x), y), x)
    else:
        model.eval()
        with torch.no_grad():
            model(x)


def trimmed_mean(times: list[float]) -> float:
    kept = sorted(times)[1:-1] if len(times) > 2 else times
    return sum(kept) / len(kept)


def speed_parser(doc: str) -> argparse.ArgumentParser:
    """The options every step-speed bench takes (this one and fold_speed.py): models, width, threads, repeats."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["vgg16", "resnet18"])
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=6)
    return parser


def main() -> None:
    parser = speed_parser(__doc__)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    runtime.setup(args.threads, 0)
    print(f"CPU: {runtime.cpu_model()}; width {args.width}, {args.threads} thread(s), {args.repeats} repeats")
    print(f"{'arch':10s} {'step':8s} {'contiguous_s':>12s} {'ratio':>6s}")
    for arch in args.archs:
        plain = build_model(arch, "digits", width=args.width)
        laid_out = runtime.fast_layout(copy.deepcopy(plain))
        if not runtime.runs_channels_last(laid_out):
            print(f"{arch:10s} kept contiguous: {runtime.channels_last_hazard(laid_out)}")
            continue
        for step, batch in STEPS.items():
            x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
            inputs = {"contiguous": (plain, x), "channels_last": (laid_out, runtime.fast_batch(x, laid_out))}
            times = {name: [] for name in inputs}
            for _ in range(args.repeats):
                for name, (model, xb) in inputs.items():
                    start = time.perf_counter()
                    run_step(step, model, xb, y)
                    times[name].append(time.perf_counter() - start)
            contiguous, channels_last = trimmed_mean(times["contiguous"]), trimmed_mean(times["channels_last"])
            print(f"{arch:10s} {step:8s} {contiguous:12.3f} {contiguous / channels_last:6.2f}")


if __name__ == "__main__":
    main()
