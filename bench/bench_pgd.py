"""Time our L-inf PGD against torchattacks.PGD on the same model, images, budget and steps.

Both run without random start and with the same step size (eps / sqrt(steps)), so they compute the same
attack; the script also prints how far their results are apart. Rounds alternate which one runs first, and
the reported ratio is median(theirs) / median(ours): above 1 means ours is faster.

    .venv/bin/python bench/bench_pgd.py                      # VGG16 width 0.125, untrained
    .venv/bin/python bench/bench_pgd.py --train-epochs 3     # quickly trained first
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F


def digits_tensors():
    """The digits train and test splits (the workflow's default split) as float images in [0, 1] and labels."""
    from advneurons import data

    parts = data.prepare_digits(0.2, 0.1, 0)

    def to_tensor(split):
        return torch.from_numpy(split.images).float() / 255, torch.from_numpy(split.labels)

    return (*to_tensor(parts["train"]), *to_tensor(parts["test"]))


def quick_train(model, x, y, epochs: int, batch: int = 64) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=epochs * math.ceil(len(x) / batch))
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.zero_grad(set_to_none=True)
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eps", type=float, default=32.0, help="1/255 units")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-epochs", type=int, default=0)
    args = parser.parse_args()

    import torchattacks

    from advneurons.attacks import AttackSpec, run_attack
    from advneurons.models.architectures import build_model
    from advneurons.runtime import setup

    setup(args.threads, seed=0)
    x_train, y_train, x_test, y_test = digits_tensors()
    x, y = x_test[: args.batch], y_test[: args.batch]
    model = build_model(args.arch, "digits", args.width).eval()
    if args.train_epochs:
        quick_train(model, x_train, y_train, args.train_epochs)

    eps = args.eps / 255
    spec = AttackSpec("pgd", eps=eps, steps=args.steps)
    theirs_attack = torchattacks.PGD(model, eps=eps, alpha=spec.resolved_step_size, steps=args.steps, random_start=False)
    runners = {"ours": lambda: run_attack(spec, model, x, y), "torchattacks": lambda: theirs_attack(x, y)}

    outputs = {name: fn() for name, fn in runners.items()}  # warm-up, and a check that both do the same thing
    with torch.no_grad():
        acc = {name: (model(out).argmax(1) == y).float().mean().item() for name, out in outputs.items()}
    diff = (outputs["ours"] - outputs["torchattacks"]).abs()
    print(f"{args.arch} width {args.width} ({'trained %d epochs' % args.train_epochs if args.train_epochs else 'untrained'}), "
          f"batch {len(y)}, {spec.describe()}, {torch.get_num_threads()} thread(s)")
    print(f"accuracy under attack: ours {acc['ours']:.4f}, torchattacks {acc['torchattacks']:.4f}; "
          f"pixels that differ: {(diff > 1e-6).float().mean().item():.2e}, max |difference| {diff.max().item() * 255:.3g}/255")

    times = {name: [] for name in runners}
    for r in range(args.rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            started = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - started)
        print(f"round {r + 1}: " + ", ".join(f"{name} {times[name][-1]:.3f}s" for name in runners))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"median: ours {med['ours']:.3f}s, torchattacks {med['torchattacks']:.3f}s")
    print(f"ratio theirs/ours (median): {med['torchattacks'] / med['ours']:.3f}")


if __name__ == "__main__":
    main()
