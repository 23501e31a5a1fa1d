"""A warm interpreter for the steps of a local run: each job forks from a process that has torch loaded.

Every workflow step is its own Python process, and `import torch` (with the CUDA libraries of the standard
wheels) plus the package costs about 2.7 s of CPU before a step does anything (bench/step_overhead.py); the
default run has about 200 jobs and the rehearsal about 400, most of them seconds of real work. In a local run,
the Snakefile's `onstart` starts one step server (:func:`start_for_run`): it imports torch, the package and the
libraries the steps use, once, then waits on a Unix socket. Each script's first statement, :func:`hand_over`,
sends the job there: the server forks a worker, which takes the script's stdin, stdout and stderr, its working
folder, environment, command line and thread count, and runs the script exactly as Snakemake wrote it (its
preamble with the pickled `snakemake` object, then the script). The script's own process waits, forwards
signals, and exits with the worker's status. What a step computes is the same code on the same inputs; only the
imports are shared (a test compares outputs with and without the server bit for bit).

Where the hand-over does not apply the script simply runs in its own process, as before: run by hand or in a
notebook, inside a SLURM job (each job is its own allocation), when the server is not up (yet), when a source
file of the package changed after the server imported it, or with ADVNEURONS_STEP_SERVER=off in the
environment of `snakemake`.

Snakemake's benchmark file of a handed-over job measures the waiting process: its wall time (`s`) is the
job's, its memory and CPU columns are not. The worker's peak resident memory and CPU seconds go into the last
line of the job's log instead (``step server: ...``), which bench/run_profile.py reads.

Only the standard library is imported at module level: the hand-over must cost milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path

ENV_SOCKET = "ADVNEURONS_STEP_SOCKET"  # set by start_for_run for the jobs of this run
ENV_SWITCH = "ADVNEURONS_STEP_SERVER"  # "off" in the environment of snakemake: every step in its own process
LOG_PREFIX = "step server: "
# Thread settings the libraries read once, when they load: the server loads them single-threaded (no thread
# exists to be lost at a fork); each worker then sets the job's own counts (torch in runtime.setup, BLAS here).
SINGLE_THREADED = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GOTO_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
# Imported by steps inside functions (so that a process of its own loads them only where needed); the server
# loads them once for all.
LAZY_IMPORTS = ("scipy.stats", "sklearn.datasets", "sklearn.model_selection", "rapidfuzz.distance",
                "pyautoattack", "pyautoattack.autoattack", "matplotlib.pyplot", "seaborn",
                "torchvision.datasets.utils")
_HEADER = struct.Struct("!I")

_in_worker = False  # True in a forked worker: the script's own hand_over call then returns at once


# --------------------------------------------------------------------------------------------------------------
# The script's side


def hand_over(namespace: dict) -> None:
    """Run this workflow script in the run's step server and exit with its status; return if it does not apply.

    `namespace` is the script's globals(): Snakemake's preamble put `snakemake` and `__real_file__` (the file
    it wrote, preamble and script) there.
    """
    if _in_worker or "snakemake" not in namespace or "__real_file__" not in namespace:
        return
    address = os.environ.get(ENV_SOCKET)
    if not address or os.environ.get(ENV_SWITCH) == "off" or "SLURM_JOB_ID" in os.environ:
        return
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(address)
    except OSError:
        return  # not up yet, or gone: this process runs the step itself
    request = {
        "script": namespace["__real_file__"],
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "argv": list(sys.argv),
        "threads": int(getattr(namespace["snakemake"], "threads", 1) or 1),
        "executable": sys.executable,
        "package": _package_location(),
    }
    try:
        socket.send_fds(conn, [b"F"], [0, 1, 2])
        _send(conn, request)
        reply = _receive(conn)
    except OSError:
        reply = None
    if not reply or "pid" not in reply:
        conn.close()
        return  # declined (reply["declined"] says why) or the server went away: run here
    _wait_for_worker(conn, reply["pid"], namespace["snakemake"])


def _package_location() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("advneurons")
    return str(Path(spec.origin).resolve().parent) if spec and spec.origin else None


def _wait_for_worker(conn: socket.socket, pid: int, smk) -> None:
    """Forward the signals this process gets to the worker, wait for its end, and leave with its status."""

    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, forward)
    try:
        result = _receive(conn)
    except OSError:
        result = None
    if result is None:
        sys.stderr.write(f"{LOG_PREFIX}the server stopped before worker {pid} reported its end\n")
        sys.stderr.flush()
        os._exit(1)
    _note_in_log(smk, result)
    if result.get("signal"):
        signal.signal(result["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), result["signal"])
    code = result.get("exit")
    os._exit(code if isinstance(code, int) else 1)  # also if the worker's signal did not end this process


def _note_in_log(smk, result: dict) -> None:
    """The worker's own figures, as the last line of the job's log (the benchmark file measures this process)."""
    logs = list(getattr(smk, "log", []) or [])
    if not logs or not os.path.exists(logs[0]):
        return
    line = (f"{LOG_PREFIX}ran in worker {result['pid']}: peak resident memory {result['maxrss_mb']:.0f} MiB, "
            f"CPU {result['user_s']:.2f} s user + {result['system_s']:.2f} s system, exit "
            f"{result.get('exit')}, signal {result.get('signal')}\n")
    with open(logs[0], "a") as fh:
        fh.write(line)


def parse_log_line(text: str) -> dict | None:
    """The worker's figures from a job's log (None if the job ran in its own process)."""
    import re

    found = re.findall(rf"^{LOG_PREFIX}ran in worker \d+: peak resident memory ([\d.]+) MiB, CPU ([\d.]+) s user "
                       r"\+ ([\d.]+) s system", text, re.M)
    if not found:
        return None
    rss, user, system = map(float, found[-1])
    return {"maxrss_mb": rss, "cpu_s": user + system}


def _send(conn: socket.socket, message: dict) -> None:
    data = json.dumps(message).encode()
    conn.sendall(_HEADER.pack(len(data)) + data)


def _receive(conn: socket.socket) -> dict | None:
    header = _read_exactly(conn, _HEADER.size)
    if header is None:
        return None
    data = _read_exactly(conn, _HEADER.unpack(header)[0])
    return None if data is None else json.loads(data)


def _read_exactly(conn: socket.socket, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = conn.recv(n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------------------------------------------
# The run's side (the Snakefile's onstart / onsuccess / onerror)


class RunningServer:
    """The step server of one run: its process and the folder of its socket."""

    def __init__(self, process, folder: Path):
        self.process, self.folder = process, folder

    @property
    def address(self) -> str:
        return str(self.folder / "socket")

    def stop(self, timeout: float = 10.0) -> None:
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        Path(self.address).unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass


def start_for_run(scripts_dir: str | Path, log_file: str | Path) -> RunningServer | None:
    """Start the step server of a local run and point the jobs' environment at it; None where it is off.

    The server preloads the top-level imports of every script in `scripts_dir`. It ends with the run (the
    Snakefile's onsuccess / onerror call :meth:`RunningServer.stop`) and by itself once the snakemake process is
    gone. Jobs that start before it listens run in their own processes.
    """
    import subprocess
    import tempfile

    if os.environ.get(ENV_SWITCH) == "off" or "SLURM_JOB_ID" in os.environ or not hasattr(os, "fork"):
        return None
    folder = Path(tempfile.mkdtemp(prefix="advneurons-steps-"))
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **{name: "1" for name in SINGLE_THREADED})
    with open(log_file, "a") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "advneurons.workflow.step_server", "--socket", str(folder / "socket"),
             "--scripts", str(Path(scripts_dir).resolve()), "--watch-pid", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    os.environ[ENV_SOCKET] = str(folder / "socket")
    return RunningServer(process, folder)


# --------------------------------------------------------------------------------------------------------------
# The server


def script_imports(scripts_dir: Path) -> list[str]:
    """The modules the workflow scripts import at top level: `import m` gives m, `from m import a` gives m and
    m.a (a may be a submodule, as in `from advneurons import runtime`; :func:`preload` skips it if it is not)."""
    import ast

    modules: list[str] = []
    for path in sorted(scripts_dir.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                modules += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return list(dict.fromkeys(modules))


def preload(modules: list[str]) -> list[str]:
    """Import `modules` and the LAZY_IMPORTS; the failures, as messages (a step that needs one fails itself).
    A name that is not a module (`m.a` for a function a of m) is skipped."""
    import importlib

    failed = []
    for name in [*modules, *LAZY_IMPORTS]:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                failed.append(f"{name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - any import error only means the step imports it itself
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    return failed


def _loaded_sources(package_dir: Path) -> dict[str, float]:
    """Modification times of the package's source files loaded in this process."""
    times = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.startswith(str(package_dir)):
            try:
                times[path] = os.stat(path).st_mtime_ns
            except OSError:
                times[path] = -1
    return times


class StepServer:
    """Accepts jobs on a Unix socket and runs each in a forked worker (see the module docstring)."""

    def __init__(self, address: str, watch_pid: int | None):
        import advneurons

        self.address, self.watch_pid = address, watch_pid
        self.package_dir = Path(advneurons.__file__).resolve().parent
        self.sources = _loaded_sources(self.package_dir)
        self.workers: dict[int, socket.socket] = {}  # worker pid -> its script's connection
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def decline_reason(self, request: dict) -> str | None:
        import torch

        if request.get("executable") != sys.executable:
            return f"another Python ({request.get('executable')})"
        if request.get("package") != str(self.package_dir):
            return f"another copy of the package ({request.get('package')})"
        if torch.cuda.is_initialized():
            return "CUDA was initialised in the server; a fork would inherit it"
        if _loaded_sources(self.package_dir) != self.sources:
            return "a source file of the package changed since the server imported it"
        return None

    def serve(self) -> None:
        import select

        # A worker's end wakes the loop at once (SIGCHLD writes to this pipe), so its script learns of it without
        # waiting for the loop's timeout.
        self.wakeup = os.pipe()
        for fd in self.wakeup:
            os.set_blocking(fd, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wakeup[1])
        self.listener.bind(self.address)
        self.listener.listen(64)
        print(f"{LOG_PREFIX}listening on {self.address} (pid {os.getpid()})", flush=True)
        while self._run_alive():
            ready, _, _ = select.select([self.listener, self.wakeup[0], *self.workers.values()], [], [], 1.0)
            for conn in ready:
                if conn is self.listener:
                    self._accept()
                elif conn == self.wakeup[0]:
                    _drain(conn)
                else:  # a waiting script closed its connection: it was killed, and its worker goes too
                    for pid, c in list(self.workers.items()):
                        if c is conn and _closed(conn):
                            _kill(pid)
            self._reap()
        for pid in list(self.workers):
            _kill(pid)
        self._reap(block=True)

    def _run_alive(self) -> bool:
        if self.watch_pid is None:
            return True
        try:
            os.kill(self.watch_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return os.getppid() == self.watch_pid

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(30)
        try:
            _, fds, _, _ = socket.recv_fds(conn, 1, 3)
            request = _receive(conn)
            if request is None or len(fds) != 3:
                raise OSError("incomplete request")
            reason = self.decline_reason(request)
            if reason:
                print(f"{LOG_PREFIX}declined {request['script']}: {reason}", flush=True)
                _send(conn, {"declined": reason})
                conn.close()
                return
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                self.listener.close()
                for fd in self.wakeup:
                    os.close(fd)
                for other in self.workers.values():
                    other.close()
                _run_worker(request, fds, conn)  # never returns
            for fd in fds:
                os.close(fd)
            conn.settimeout(None)
            self.workers[pid] = conn
            _send(conn, {"pid": pid})
        except OSError as exc:
            print(f"{LOG_PREFIX}a connection ended without a complete request ({exc})", flush=True)
            conn.close()

    def _reap(self, block: bool = False) -> None:
        while self.workers:
            try:
                pid, status, usage = os.wait4(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.workers.pop(pid, None)
            if conn is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            result = {"pid": pid, "exit": code if code >= 0 else None, "signal": -code if code < 0 else None,
                      "maxrss_mb": usage.ru_maxrss / 1024, "user_s": usage.ru_utime, "system_s": usage.ru_stime}
            try:
                _send(conn, result)
            except OSError:
                pass
            conn.close()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _closed(conn: socket.socket) -> bool:
    try:
        return not conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _run_worker(request: dict, fds: list[int], conn: socket.socket) -> None:
    """In the forked worker: become the script's process and run the file Snakemake wrote; exit with its status."""
    global _in_worker
    import runpy
    import tempfile

    _in_worker = True
    code = 1
    try:
        conn.close()
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _die_with_parent()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.pop(ENV_SOCKET, None)  # processes the step starts run on their own
        tempfile.tempdir = None  # the job's TMPDIR, if it has one
        sys.argv = list(request["argv"])
        _blas_threads(request["threads"])
        try:
            runpy.run_path(request["script"], run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - reported as Python reports an uncaught exception
            sys.excepthook(*sys.exc_info())
            code = 1
        import atexit

        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _die_with_parent() -> None:
    """The worker gets SIGKILL if the server ends (Linux prctl PR_SET_PDEATHSIG): no step outlives its run."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _blas_threads(threads: int) -> None:
    """The job's thread count for numpy's and scipy's BLAS (the server loaded them with one thread)."""
    if threads <= 1:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=threads, user_api="blas")


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="The step server of a local workflow run (see the module doc).")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--scripts", required=True, help="the workflow_scripts folder, whose imports are preloaded")
    parser.add_argument("--watch-pid", type=int, default=None, help="end once this process (snakemake) is gone")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the steps themselves; the run ends the server
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the run's end: leave through `finally`
    start = time.perf_counter()
    failed = preload(script_imports(Path(args.scripts)))
    for message in failed:
        print(f"{LOG_PREFIX}not preloaded: {message}", flush=True)
    # The preloaded objects go to the collector's permanent generation: a worker's collections then skip them
    # (as a process that imported less would have fewer to walk) and do not write to their pages, which stay
    # shared with the server instead of being copied into every worker.
    import gc

    gc.collect()
    gc.freeze()
    print(f"{LOG_PREFIX}preloaded in {time.perf_counter() - start:.1f} s ({gc.get_freeze_count()} objects frozen)",
          flush=True)
    server = StepServer(args.socket, args.watch_pid)
    try:
        server.serve()
    finally:
        server.listener.close()
        Path(args.socket).unlink(missing_ok=True)
        try:
            Path(args.socket).parent.rmdir()  # start_for_run's folder, once empty
        except OSError:
            pass


if __name__ == "__main__":
    # Run as `python -m`, this file is __main__; the workers must share the one module the scripts import, whose
    # _in_worker flag their hand_over reads.
    from advneurons.workflow.step_server import main as module_main

    module_main()
