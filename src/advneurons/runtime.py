"""Process set-up shared by every step: threads, seeds, determinism, provenance metadata, atomic writes."""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import platform
import random
import sys
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("advneurons")


def setup(threads: int, seed: int | None = None) -> None:
    """Pin torch to `threads` CPU threads, make kernels deterministic, and seed every RNG.

    Must run before any tensor work: set_num_threads after the first parallel op does not shrink the pool,
    and two jobs fighting over the same cores run many times slower.
    """
    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    keep_freed_memory()
    deterministic_kernels()
    torch.backends.cudnn.benchmark = False
    if seed is not None:
        seed_everything(seed)


# glibc's mallopt() parameters (malloc.h) and the values a step runs with: blocks up to 32 MiB (glibc's largest
# mmap threshold) come from the heap, and up to 1 GiB freed at the top of the heap stays there.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
ALLOCATOR_SETTINGS = {"mmap_threshold": 32 << 20, "trim_threshold": 1 << 30}
_allocator = "default"


def keep_freed_memory() -> str:
    """Keep the memory a step frees in the process instead of handing it back to the operating system.

    glibc unmaps a freed block above its mmap threshold and trims the top of the heap once more than the trim
    threshold lies free there; a torch step frees its activations and gradients after every call, so the next
    call faults the same pages in again, zeroed by the kernel. With ALLOCATOR_SETTINGS the freed blocks are reused
    (bench/allocator_speed.py measures what this buys: steps at the default run's width 1.1-1.4x faster, full-width
    ones up to 1.16x). Blocks above 32 MiB are still unmapped when freed, so a step's memory stays near its peak,
    not above it. No effect elsewhere than glibc (the allocator is left as it is); ADVNEURONS_MALLOC=default in the
    environment leaves glibc's defaults too (the benchmark's baseline). Returns the allocator's setting, which
    :func:`versions` records.
    """
    global _allocator
    if os.environ.get("ADVNEURONS_MALLOC") == "default" or platform.system() != "Linux":
        return _allocator
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return _allocator
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if mallopt(_M_MMAP_THRESHOLD, ALLOCATOR_SETTINGS["mmap_threshold"]) == 1 and \
            mallopt(_M_TRIM_THRESHOLD, ALLOCATOR_SETTINGS["trim_threshold"]) == 1:
        _allocator = ",".join(f"{k}={v}" for k, v in ALLOCATOR_SETTINGS.items())
    return _allocator


def deterministic_kernels() -> None:
    """Deterministic kernels (warnings where an op has none), as ``torch.use_deterministic_algorithms(True,
    warn_only=True)`` sets them, without its import of torch._inductor: that import (dynamo and inductor)
    costs seconds of every job's start-up, and only sets inductor's own flag, for compiled code this package
    never runs. If inductor is loaded anyway, its flag is set too."""
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def generator(seed: int) -> torch.Generator:
    """A CPU generator of its own, so that one consumer's draws do not shift another's."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def device() -> torch.device:
    """CUDA when the job sees a GPU (e.g. a SLURM job with --gpus), else the CPU.

    ADVNEURONS_DEVICE=cpu forces the CPU, e.g. to compare with CPU results.
    """
    wanted = os.environ.get("ADVNEURONS_DEVICE")
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's tensors live (CPU for a model without any)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------- GPU hot paths
PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def autocast(precision: str, where: torch.device | str):
    """The forward passes of a training or attack step in bfloat16 (``precision="bf16"``, opt-in: on CUDA
    about twice the throughput, with bf16's 8-bit mantissa in activations and gradients); ``"fp32"`` changes
    nothing. Weights, optimiser state and the attack's perturbation stay in float32."""
    if check_precision(precision) == "fp32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(where).type, dtype=torch.bfloat16)


def channels_last_hazard(model: torch.nn.Module) -> str | None:
    """The name of the first convolution in `model` that oneDNN's CPU kernels cannot train in channels_last,
    else None.

    The weight gradient of a 1x1 convolution with a stride above 1 and fewer than 8 input channels, in
    channels_last, kills the process on CPUs whose best instruction set is AVX2 (torch 2.14.1, oneDNN 3.12):
    a segmentation fault or an abort with 2 to 7 input channels at stride 2 or 4, a hang on 2 threads; 1 or
    8 and more input channels, 3x3 kernels and the contiguous layout are unaffected (measured 2026-12-04 on
    an AMD EPYC with AVX2, tests/unit/test_hot_paths.py). ResNet18's shortcut projections are such
    convolutions below width 1/8 (width 1/16: 4 input channels in layer2's), as an external model's may be.
    """
    for name, module in model.named_modules():
        if (isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) == (1, 1)
                and max(module.stride) > 1 and module.in_channels < 8):
            return name or type(module).__name__
    return None


def runs_channels_last(model: torch.nn.Module) -> bool:
    """Whether :func:`fast_layout` lays `model` out in channels_last: always on CUDA; on the CPU unless it has
    a convolution oneDNN crashes on in that layout (:func:`channels_last_hazard`)."""
    return model_device(model).type == "cuda" or channels_last_hazard(model) is None


def fast_layout(model: torch.nn.Module) -> torch.nn.Module:
    """The model's weights in channels_last, the layout convolutions run fastest in: on CUDA (tensor cores) and
    on the CPU too (oneDNN's NHWC kernels: at the default width 1/8, on 1 thread, a training step 1.2-1.4x, an
    attack's gradient step 1.1-1.2x and a forward pass 1.2-1.6x faster than in the contiguous layout, over two
    runs of bench/layout_speed.py on an AVX2 machine on 2026-12-04; a VGG16 training step ~1.4x on an AVX-512
    one on 2026-12-03). Results differ from the contiguous layout's only by float rounding,
    and are as deterministic. A CPU model with a convolution oneDNN crashes on in channels_last
    (:func:`channels_last_hazard`) keeps the contiguous layout, and says so in the log."""
    if runs_channels_last(model):
        model.to(memory_format=torch.channels_last)
    else:
        log.info("contiguous layout: oneDNN's CPU kernels crash on %s in channels_last", channels_last_hazard(model))
    return model


def fast_batch(x: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """An image batch in the layout :func:`fast_layout` gives `model`. The two must agree: a channels_last
    batch alone makes a convolution run in channels_last, and every layer after it."""
    if x.dim() == 4 and runs_channels_last(model):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def hold_on_device(tensors: tuple[torch.Tensor, ...], where: torch.device | str, share: float = 0.25):
    """The tensors moved to the device once, when they fit in ``share`` of its free memory (CIFAR-10's
    training split is 550 MB as float32), so that no batch is copied from the host; else left where they are
    (and pinned, so batch copies can overlap compute). A no-op on the CPU."""
    where = torch.device(where)
    if where.type != "cuda":
        return tensors
    free, _ = torch.cuda.mem_get_info(where)
    if sum(t.numel() * t.element_size() for t in tensors) <= share * free:
        return tuple(t.to(where) for t in tensors)
    return tuple(t.pin_memory() for t in tensors)


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": str(torch.__version__)}
    for pkg in ("advneurons", "numpy", "torchvision", "scikit-learn", "scipy", "pandas", "auto-lirpa"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    out["device"] = str(device())
    if out["device"].startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    for var in ("SLURM_JOB_ID", "SLURM_CLUSTER_NAME"):
        if var in os.environ:
            out[var.lower()] = os.environ[var]
    out["threads"] = torch.get_num_threads()
    out["allocator"] = _allocator
    # Results differ between CPUs (torch's kernels pick their instruction set, and so their rounding, by CPU):
    # record which CPU and which instruction set the step ran with.
    out["cpu"] = cpu_model()
    out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return out


def metadata(step: str, params: dict, seed: int | None = None, **extra) -> dict:
    return {
        "step": step,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "params": params,
        "versions": versions(),
        **extra,
    }


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary sibling path and move it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def configure_logging(log_file: str | Path | None = None) -> None:
    """Route stderr (tqdm bars, warnings, tracebacks) and the package log into `log_file` if given.

    Snakemake's `log:` file then holds everything the step printed, as a shell rule's `2> {log}` would.
    """
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        sys.stderr = open(log_file, "w", buffering=1)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        handlers=[logging.StreamHandler(sys.stderr)],
        force=True,
    )
    logging.captureWarnings(True)
    # A crash in native code (a segmentation fault in a kernel) then leaves each thread's Python stack in the
    # log instead of a bare signal in Snakemake's report.
    faulthandler.enable(file=sys.stderr)
    # Every job's log says where it ran (the JSON outputs also carry it in their versions block).
    log.info("device: %s", device_description())


def end_step() -> None:
    """End a workflow step's process once its outputs are written, without the interpreter's teardown.

    Tearing down a process that has imported torch (with the CUDA libraries of the standard wheels), pandas and
    the package takes about 0.9 s (bench/step_overhead.py --end-step, 2026-12-03), which every job of a run pays
    after its work is done. Here the exit handlers still run (logging's shutdown, the clean-up of temporary folders) and
    stdout and the log are flushed; only the freeing of modules and of the native libraries' objects is skipped,
    which the operating system does at once. Every output is closed by then: writers close their files, most
    through :func:`atomic_path`. Scripts call it last, so a failing step never reaches it and exits as Python
    would, with its traceback and a non-zero status. In a session a person drives (an interactive interpreter,
    IPython or a notebook's `%run`, a debugger) it returns and leaves the process alone.
    """
    import atexit

    if sys.flags.interactive or hasattr(sys, "ps1") or "IPython" in sys.modules or sys.gettrace() is not None:
        return
    atexit._run_exitfuncs()  # CPython's own exit handlers, as a normal exit runs them
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


def device_description() -> str:
    """The device a step computes on, with the GPU's name or the CPU's model."""
    where = device()
    if where.type == "cuda":
        return f"{where} ({torch.cuda.get_device_name(where)})"
    return f"{where} ({cpu_model()})"
