"""What folding BatchNorm (and freezing parameters) buys the jobs that only attack and evaluate a model: the time
of each step on the model as jobs loaded it before (eval mode, fastest layout) over its time on the model
`advneurons.models.inference.for_attacks` prepares, measured in one run.

Steps: a forward pass of 256 images (what score-based attacks and accuracy do), an attack's gradient step on 64
(autograd.grad of the loss for the input: PGD, APGD, C&W), a full backward pass on 64 (`loss.backward()`, as
FAB-T does), a whole L-inf PGD-10 attack on 128 images through the package's attack code, and one PAT training
batch of 128 (PGD-10 crafted on the model itself before, on its `FoldedShadow` now, then the training step). The
two models' steps alternate, `--repeats` times each, so load on a shared machine hits both alike; the fastest and slowest
repeat of each are dropped and the rest averaged. A ratio above 1 means the prepared model is faster. The
largest difference of their logits on the forward batch is printed too (float rounding only).

With `--checkpoint` (a trained model of a run, e.g. results/<data id>/models/<model>/model.pt) and `--test`
(that run's test split), it times instead the robustness evaluation of that model under each of `--attacks`
(config entries as in config.yaml, by type) on `--n-images` test images: loaded as evaluation jobs loaded it
before (eval mode, fastest layout) and through `for_attacks`, alternating, and prints both accuracies (which may
differ by an image: a gradient component within rounding of zero can take the other sign).

Run:  .venv/bin/python bench/fold_speed.py [--width 0.125] [--threads 1] [--repeats 6]
      .venv/bin/python bench/fold_speed.py --checkpoint MODEL.pt --test TEST.npz [--attacks pgd autoattack spsa]
          [--n-images 16] [--repeats 2]
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from advneurons import runtime
from advneurons.attacks import AttackSpec, run_attack
from advneurons.models.architectures import build_model
from advneurons.models.inference import FoldedShadow, for_attacks
from advneurons.training.loop import TrainConfig, _train_epoch
from layout_speed import speed_parser, trimmed_mean  # bench/, the folder Python runs this script from

STEPS = {"forward": 256, "attack_grad": 64, "backward": 64, "pgd10": 128, "pat_batch": 128}  # step -> batch size
PAT = TrainConfig(method="pat", batch_size=128, eps=8, steps=10, augmentation="none")
PGD10 = AttackSpec.from_config({"type": "pgd", "eps": 8, "steps": 10})


def run_step(step: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    if step == "forward":
        with torch.no_grad():
            model(x)
    elif step == "attack_grad":
        x = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(x), y), x)
    elif step == "backward":
        x = x.clone().requires_grad_(True)
        F.cross_entropy(model(x), y).backward()
    else:
        run_attack(PGD10, model, x, y, generator=torch.Generator().manual_seed(0))


def pat_batch(trainer: tuple, x: torch.Tensor, y: torch.Tensor) -> None:
    model, optimizer, scheduler, crafter = trainer
    _train_epoch(model, optimizer, scheduler, PAT, x, y, torch.Generator().manual_seed(0), crafter=crafter)


def trainers(arch: str, width: float, repeats: int) -> dict:
    """Two identical models in training, one crafting PAT's examples on itself, one on its folded shadow."""
    out = {}
    for name in ("before", "prepared"):
        torch.manual_seed(0)
        model = runtime.fast_layout(build_model(arch, "digits", width=width))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=repeats + 2)
        out[name] = (model, optimizer, scheduler, FoldedShadow.of(model) if name == "prepared" else None)
    return out


def trained_like(arch: str, width: float) -> torch.nn.Module:
    """A freshly built model whose BatchNorms hold running statistics of a few batches (eval mode)."""
    model = build_model(arch, "digits", width=width)
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(64, 3, 32, 32))
    return model.eval()


EVAL_ATTACKS = {  # the default config's entries
    "pgd": {"type": "pgd", "eps": 32, "steps": 10},
    "cw": {"type": "cw_l2", "eps": 320, "initial_const": 1, "steps": 100},
    "spsa": {"type": "spsa", "eps": 32, "samples": 128, "steps": 50},
    "nattack": {"type": "nattack", "eps": 32, "samples": 100, "steps": 50},
    "autoattack": {"type": "autoattack", "eps": 32},
}


def checkpoint_bench(args) -> None:
    from advneurons.data import load_split
    from advneurons.evaluation.robustness import evaluate_model
    from advneurons.models.checkpoint import load_model

    unknown = [a for a in args.attacks if a not in EVAL_ATTACKS]
    if unknown:
        raise SystemExit(f"unknown attack(s) {unknown}; choose from {sorted(EVAL_ATTACKS)}")
    before = runtime.fast_layout(load_model(args.checkpoint)[0].to(runtime.device()))
    prepared = for_attacks(load_model(args.checkpoint)[0])
    images, labels = load_split(args.test)
    images, labels = images[: args.n_images], labels[: args.n_images]
    print(f"{args.checkpoint}: {len(labels)} test images, {args.repeats} repeats")
    print(f"{'attack':12s} {'before_s':>9s} {'prepared_s':>10s} {'ratio':>6s}  accuracy before / prepared")
    for name in args.attacks:
        times, accuracy = {"before": [], "prepared": []}, {}
        for _ in range(args.repeats):
            for label, model in (("before", before), ("prepared", prepared)):
                start = time.perf_counter()
                records, _ = evaluate_model(model, images, labels, {name: EVAL_ATTACKS[name]}, label, 0)
                times[label].append(time.perf_counter() - start)
                accuracy[label] = float(records.set_index("attack").loc[name, "accuracy"])
        old, new = trimmed_mean(times["before"]), trimmed_mean(times["prepared"])
        print(f"{name:12s} {old:9.2f} {new:10.2f} {old / new:6.2f}  {accuracy['before']:.4f} / {accuracy['prepared']:.4f}")


def main() -> None:
    parser = speed_parser(__doc__)
    parser.add_argument("--checkpoint", help="a trained model: time its robustness evaluation instead")
    parser.add_argument("--test", help="the test split of the checkpoint's run (with --checkpoint)")
    parser.add_argument("--attacks", nargs="+", default=["pgd", "autoattack", "spsa"])
    parser.add_argument("--n-images", type=int, default=16)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if bool(args.checkpoint) != bool(args.test):
        parser.error("--checkpoint and --test go together")
    runtime.setup(args.threads, 0)
    if args.checkpoint:
        checkpoint_bench(args)
        return
    print(f"CPU: {runtime.cpu_model()}; width {args.width}, {args.threads} thread(s), {args.repeats} repeats")
    print(f"{'arch':10s} {'step':12s} {'before_s':>9s} {'prepared_s':>10s} {'ratio':>6s}")
    for arch in args.archs:
        before = runtime.fast_layout(trained_like(arch, args.width))
        prepared = for_attacks(copy.deepcopy(before))
        for step, batch in STEPS.items():
            x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
            x = runtime.fast_batch(x, before)
            times = {"before": [], "prepared": []}
            training = trainers(arch, args.width, args.repeats) if step == "pat_batch" else None
            for _ in range(args.repeats):
                for name, model in (("before", before), ("prepared", prepared)):
                    start = time.perf_counter()
                    if training:
                        pat_batch(training[name], x, y)
                    else:
                        run_step(step, model, x, y)
                    times[name].append(time.perf_counter() - start)
            old, new = trimmed_mean(times["before"]), trimmed_mean(times["prepared"])
            print(f"{arch:10s} {step:12s} {old:9.3f} {new:10.3f} {old / new:6.2f}")
            if step == "forward":
                with torch.no_grad():
                    diff = float((before(x) - prepared(x)).abs().max())
                print(f"{arch:10s} {'':12s} largest logit difference {diff:.1e}")


if __name__ == "__main__":
    main()
