"""What keeping freed memory in the process buys on this machine: a step's time, system time and page faults with
glibc's default malloc thresholds against the thresholds every workflow step sets (runtime.keep_freed_memory, called
by runtime.setup), measured in one run.

By default glibc returns freed memory to the operating system: a block above the mmap threshold (dynamic, at most
32 MiB) is unmapped when freed, and the top of the heap is trimmed once more than the trim threshold lies free
there. A torch step allocates and frees its activations and gradients on every call, so the next call faults
those pages in again, zero-filled by the kernel: system time, not computing. Every measurement here is a fresh
interpreter (the baseline has ADVNEURONS_MALLOC=default in its environment); the two variants alternate,
`--repeats` times each, so that load on a shared machine hits them alike; the fastest and slowest repeat are
dropped and the rest averaged. A ratio above 1 means the workflow's setting is faster.

Workloads (`--workloads`): `train` (one training step, batch 128), `attack` (an attack's input-gradient step,
batch 64) and `forward` (batch 256) of each architecture at `--width`, repeated `--steps` times in one process
(bench/layout_speed.py's steps, after one step to warm up), and `--job CMD`: a whole workflow step run by hand, e.g.
`--job ".venv/bin/python workflow_scripts/evaluate_attack.py results/<...>/fgsm~<id>.csv"` in a finished run's
folder (its import of torch included).

Run:  .venv/bin/python bench/allocator_speed.py [--width 0.125] [--steps 10] [--repeats 6] [--job CMD]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from layout_speed import trimmed_mean  # noqa: E402

from advneurons.runtime import ALLOCATOR_SETTINGS  # noqa: E402

CHILD = """
import json, sys, time
sys.path.insert(0, {bench!r})
import torch
from advneurons import runtime
from advneurons.models.architectures import build_model
from layout_speed import STEPS, run_step
runtime.setup({threads}, 0)
model = runtime.fast_layout(build_model({arch!r}, "digits", width={width}))
x = torch.rand(STEPS[{step!r}], 3, 32, 32)
y = torch.randint(0, 10, (STEPS[{step!r}],))
run_step({step!r}, model, x, y)
start = time.perf_counter()
for _ in range({steps}):
    run_step({step!r}, model, x, y)
print(json.dumps({{"s": time.perf_counter() - start}}))
"""


def environment(tuned: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ADVNEURONS_MALLOC"}
    if not tuned:
        env["ADVNEURONS_MALLOC"] = "default"
    return env


def run_child(cmd: list[str], tuned: bool, timed_by_child: bool) -> dict:
    """Run `cmd` in a fresh process: its wall time (the child's own loop time when it prints one), and the whole
    process's system CPU seconds and minor page faults."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environment(tuned), text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed with status {proc.returncode}")
    return {"wall_s": json.loads(proc.stdout.strip().splitlines()[-1])["s"] if timed_by_child else wall,
            "sys_s": after.ru_stime - before.ru_stime, "minflt": after.ru_minflt - before.ru_minflt}


def measure(cmd: list[str], repeats: int, timed_by_child: bool) -> dict[bool, dict]:
    rows = {False: [], True: []}
    for _ in range(repeats):
        for tuned in (False, True):
            rows[tuned].append(run_child(cmd, tuned, timed_by_child))
    return {tuned: {k: trimmed_mean([r[k] for r in rs]) for k in rs[0]} for tuned, rs in rows.items()}


def print_row(name: str, result: dict[bool, dict]) -> None:
    base, tuned = result[False], result[True]
    print(f"{name:24s} time {base['wall_s']:6.2f} -> {tuned['wall_s']:6.2f} s  ratio {base['wall_s'] / tuned['wall_s']:.2f}"
          f"  system {base['sys_s']:5.2f} -> {tuned['sys_s']:5.2f} s"
          f"  page faults {base['minflt'] / 1e3:4.0f}k -> {tuned['minflt'] / 1e3:4.0f}k", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["vgg16", "resnet18"])
    parser.add_argument("--workloads", nargs="+", default=["train", "attack", "forward"])
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--job", action="append", default=[], help="a whole step's command line, timed as a process")
    args = parser.parse_args()
    print(f"glibc default vs {ALLOCATOR_SETTINGS} (time: the steps' loop, or a --job's whole process; system time and"
          f" page faults: the whole process); {args.repeats} repeats, trimmed mean")
    for arch in args.archs:
        for step in args.workloads:
            code = CHILD.format(bench=str(ROOT / "bench"), threads=args.threads, arch=arch, width=args.width,
                                step=step, steps=args.steps)
            print_row(f"{arch} {step} x{args.steps}", measure([sys.executable, "-c", code], args.repeats, True))
    for job in args.job:
        cmd = shlex.split(job)
        print_row(Path(cmd[1]).stem if len(cmd) > 1 else cmd[0], measure(cmd, args.repeats, False))


if __name__ == "__main__":
    main()
