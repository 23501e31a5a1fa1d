"""Fixed cost of a workflow step: the time of a no-op run of its script (its imports and Snakemake's preamble)
against `python -c "import torch"`, measured in one run.

Target (issue 16): at most 1.5x `import torch` for every step. Each step's imports are its script's top-level
import statements and runtime.setup, which most steps call first (until 2026-12-02 it imported torch._inductor
through torch.use_deterministic_algorithms: seconds per job); the preamble is what Snakemake puts before a script
(`from snakemake import script` and its logger). Every command runs `--repeats` times in a fresh interpreter, interleaved so that load on a shared
machine hits all of them alike; the median is reported. With `--jobs` the default run's job count of each step
(from a dry run) weights the step, which gives the run's fixed cost in CPU-seconds. With `--end-step` each step
is also timed ending as the scripts end, through runtime.end_step (exit handlers, no interpreter teardown), and
the two are compared. With `--server` each step is also timed as a local run starts it: through a step server
(advneurons.workflow.step_server) that has loaded the imports once; the script's process then only runs
Snakemake's preamble and the hand-over, and a forked worker runs the script's set-up and end.

Run:  .venv/bin/python bench/step_overhead.py [--repeats 5] [--jobs] [--end-step] [--server] [--steps <script> ...]
"""

from __future__ import annotations

import argparse
import ast
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.5
PREAMBLE = "from snakemake import script\nfrom snakemake.logging import logger\n"


SETUP = "\nfrom advneurons import runtime\nruntime.setup(1, 0)\n"
END_STEP = "\nfrom advneurons import runtime\nruntime.end_step()\n"


def script_imports(path: Path) -> str:
    """The top-level import statements of a workflow script, as code, and the step set-up it runs
    (runtime.setup: threads, deterministic kernels, seeds) when it calls it."""
    text = path.read_text()
    tree = ast.parse(text)
    code = "\n".join(ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))
    return code + SETUP if "runtime.setup(" in text else code


# What Snakemake's preamble does before a script (imports for the pickled `snakemake` object) and the two globals the
# hand-over reads; the file is run as Snakemake runs its copy of a script.
SERVER_PREAMBLE = ("import sys, pickle\nfrom snakemake.logging import logger\nfrom snakemake.iocontainers import Snakemake\n"
                   "from types import SimpleNamespace\nsnakemake = SimpleNamespace(threads=1, log=[])\n"
                   "__real_file__ = __file__\nfrom advneurons.workflow.step_server import hand_over\n"
                   "hand_over(globals())\n")


def served_step(path: Path, folder: Path) -> Path:
    """A file that runs the step's no-op as a local run does: the preamble, the hand-over, then (in the worker) the
    step's imports, set-up and end_step."""
    target = folder / f"{path.stem}.py"
    target.write_text(SERVER_PREAMBLE + script_imports(path) + END_STEP)
    return target


def start_server():
    """A step server for the repository's scripts, once it accepts connections."""
    import socket
    import tempfile

    from advneurons.workflow import step_server

    server = step_server.start_for_run(ROOT / "workflow_scripts", Path(tempfile.mkdtemp()) / "step_server.log")
    if server is None:
        raise SystemExit("no step server here (ADVNEURONS_STEP_SERVER=off or inside a SLURM job)")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(server.address)
                return server
            except OSError:
                time.sleep(0.2)
    server.stop()
    raise SystemExit("the step server did not start within 120 s")


def timed(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return time.perf_counter() - start


def planned_jobs(configfiles: list[Path] | None = None) -> dict[str, int]:
    """Rule -> number of jobs from scratch (`snakemake -n -F`) of the default config or of `configfiles`
    (merged in order, as Snakemake's --configfile does)."""
    extra = ["--configfile", *map(str, configfiles)] if configfiles else []
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-F", "--quiet", "rules", *extra], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    found = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", out, re.M)}
    return {rule: n for rule, n in found.items() if rule != "total"}


def script_of_rule() -> dict[str, str]:
    """Rule -> script name, read from rules/*.smk."""
    out = {}
    for smk in (ROOT / "rules").glob("*.smk"):
        for rule, script in re.findall(r"^rule (\w+):.*?workflow_scripts/(\w+)\.py", smk.read_text(), re.M | re.S):
            out[rule] = script
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jobs", action="store_true", help="weight each step by its job count in the default run")
    parser.add_argument("--end-step", action="store_true", help="also time each step ending through runtime.end_step")
    parser.add_argument("--server", action="store_true", help="also time each step through a step server")
    parser.add_argument("--steps", nargs="+", help="only these steps (script names); not with --jobs")
    args = parser.parse_args()
    if args.steps and args.jobs:
        parser.error("--jobs weights every step of the run: leave out --steps")
    commands = {"python (no import)": "pass", "import torch": "import torch"}
    for path in sorted((ROOT / "workflow_scripts").glob("*.py")):
        if args.steps and path.stem not in args.steps:
            continue
        commands[path.stem] = PREAMBLE + script_imports(path)
        if args.end_step:
            commands[f"{path.stem} +end_step"] = commands[path.stem] + END_STEP
    server, served = None, {}
    if args.server:
        import tempfile

        server, folder = start_server(), Path(tempfile.mkdtemp())
        served = {f"{path.stem} via server": served_step(path, folder)
                  for path in sorted((ROOT / "workflow_scripts").glob("*.py")) if not args.steps or path.stem in args.steps}
    times = {name: [] for name in [*commands, *served]}
    try:
        for _ in range(args.repeats):
            for name, code in commands.items():
                times[name].append(timed(code))
            for name, path in served.items():
                start = time.perf_counter()
                subprocess.run([sys.executable, str(path)], check=True, cwd=ROOT)
                times[name].append(time.perf_counter() - start)
    finally:
        if server is not None:
            server.stop()
    median = {name: statistics.median(t) for name, t in times.items()}
    torch_s = median["import torch"]
    print(f"{'step':40s} {'no-op s':>8s} {'x torch':>8s}")
    for name, seconds in sorted(median.items(), key=lambda kv: -kv[1]):
        flag = "" if name in ("python (no import)", "import torch") or seconds <= TARGET_RATIO * torch_s else "  over"
        print(f"{name:40s} {seconds:8.2f} {seconds / torch_s:8.2f}{flag}")
    if args.end_step:
        pairs = [(median[name], median[f"{name} +end_step"]) for name in commands if f"{name} +end_step" in median]
        saved = statistics.median(full - fast for full, fast in pairs)
        ratio = statistics.median(fast / full for full, fast in pairs)
        print(f"\nend_step: median saving {saved:.2f} s per step, no-op time x{ratio:.2f} (median over "
              f"{len(pairs)} steps)")
    worst = max(v for k, v in median.items() if k not in ("python (no import)", "import torch")
                and not k.endswith(("+end_step", " via server")))
    print(f"\nworst step / import torch = {worst / torch_s:.2f} (target <= {TARGET_RATIO})")
    if served:
        print(f"through the step server: median no-op {statistics.median(median[k] for k in served):.2f} s, worst "
              f"{max(median[k] for k in served) / torch_s:.2f}x import torch")
    if args.jobs:
        jobs, scripts = planned_jobs(), script_of_rule()
        suffixes = [""] + ([" +end_step"] if args.end_step else []) + ([" via server"] if served else [])
        for suffix in suffixes:
            total = sum(n * median[scripts[rule] + suffix] for rule, n in jobs.items() if rule in scripts)
            print(f"default run{suffix}: {sum(jobs.values())} jobs, fixed cost {total:.0f} CPU-s "
                  f"({total / 2 / 60:.1f} min of wall time on 2 cores)")


if __name__ == "__main__":
    main()
