"""Known-answer check of the AutoAttack package on a quickly trained tiny model.

AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square, each on what the previous ones left) must leave no
more accuracy than our L-inf PGD-10 and than its own APGD-CE alone. The script also runs torchattacks'
AutoAttack on the same images for comparison, and prints accuracy and time of each.

    .venv/bin/python bench/check_autoattack.py --images 48 --eps 16
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--eps", type=float, default=16.0, help="1/255 units")
    parser.add_argument("--width", type=float, default=0.0625)
    parser.add_argument("--train-epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--torchattacks", action="store_true", help="also run torchattacks.AutoAttack")
    args = parser.parse_args()

    from advneurons.attacks import AttackSpec, autoattack, run_attack
    from advneurons.models.architectures import build_model
    from advneurons.runtime import setup

    from bench_pgd import digits_tensors, quick_train

    setup(args.threads, seed=0)
    x_train, y_train, x_test, y_test = digits_tensors()
    x, y = x_test[: args.images], y_test[: args.images]
    torch.manual_seed(0)
    model = build_model("vgg16", "digits", args.width)
    quick_train(model, x_train, y_train, args.train_epochs)
    eps = args.eps / 255

    def acc(adv):
        with torch.no_grad():
            return (model(adv).argmax(1) == y).float().mean().item()

    runs = {
        "clean": lambda: x,
        "our PGD-10": lambda: run_attack(AttackSpec("pgd", eps=eps, steps=10), model, x, y),
        "our PGD-50 (random start)": lambda: run_attack(AttackSpec("pgd", eps=eps, steps=50, random_start=True), model, x, y, torch.Generator().manual_seed(0)),
    }
    for part in ("apgd-ce", "apgd-t", "fab-t", "square"):
        runs[f"pyautoattack {part} alone"] = (lambda p: lambda: autoattack(
            model, x, y, eps, version="custom", attacks=[p], generator=torch.Generator().manual_seed(0)))(part)
    runs["pyautoattack standard"] = lambda: run_attack(AttackSpec("autoattack", eps=eps), model, x, y, torch.Generator().manual_seed(0))
    if args.torchattacks:
        import torchattacks

        runs["torchattacks AutoAttack standard"] = lambda: torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)(x, y)
    results = {}
    print(f"VGG16 width {args.width}, {args.train_epochs} epochs, {len(y)} digits test images, L-inf eps={args.eps:g}/255")
    for name, fn in runs.items():
        started = time.perf_counter()
        results[name] = acc(fn())
        print(f"{name:40s} accuracy {results[name]:.4f}  ({time.perf_counter() - started:.1f}s)", flush=True)
    aa = results["pyautoattack standard"]
    ok = aa <= results["our PGD-10"] and aa <= results["pyautoattack apgd-ce alone"]
    print(f"check: AutoAttack {aa:.4f} <= our PGD-10 {results['our PGD-10']:.4f} and <= APGD-CE alone "
          f"{results['pyautoattack apgd-ce alone']:.4f}: {'PASS' if ok else 'FAIL'}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
