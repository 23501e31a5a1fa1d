"""The step server (advneurons.workflow.step_server): a script handed over runs in a forked worker with the
script's streams, folder, environment, command line and exit status; signals and a killed script reach the
worker; where the hand-over does not apply the script runs in its own process. That the workflow's results do
not change is checked on whole runs (tests/workflow/test_failure_drills.py runs its reference without it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advneurons.workflow import step_server

ROOT = Path(__file__).resolve().parents[2]

# What Snakemake writes for a script job, reduced to what hand_over reads: a `snakemake` object with threads and
# log, and __real_file__; then the script, which hands itself over first.
STEP = """
import os, sys, time
from types import SimpleNamespace
snakemake = SimpleNamespace(threads=1, log=[os.environ["STEP_LOG"]])
__real_file__ = __file__
from advneurons.workflow.step_server import hand_over
hand_over(globals())
import json
print(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(), "argv": sys.argv[1:],
                  "value": os.environ.get("STEP_VALUE"), "socket": os.environ.get("ADVNEURONS_STEP_SOCKET")}),
      flush=True)
print("to stderr", file=sys.stderr)
with open(os.environ["STEP_LOG"], "w") as fh:
    fh.write("the step's own log\\n")
mode = os.environ.get("STEP_MODE")
if mode == "sleep":
    time.sleep(120)
if mode == "raise":
    raise ValueError("boom")
sys.exit(int(os.environ.get("STEP_EXIT", "0")))
"""


def _connectable(address: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(address)
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    scripts = tmp_path_factory.mktemp("scripts")
    (scripts / "one_step.py").write_text("import json\nfrom advneurons import runtime\n")
    saved = {k: os.environ.get(k) for k in (step_server.ENV_SOCKET, step_server.ENV_SWITCH, "SLURM_JOB_ID")}
    for key in (step_server.ENV_SWITCH, "SLURM_JOB_ID"):
        os.environ.pop(key, None)
    running = step_server.start_for_run(scripts, tmp_path_factory.mktemp("logs") / "step_server.log")
    assert running is not None
    deadline = time.monotonic() + 120
    while not _connectable(running.address):
        assert running.process.poll() is None, "the server exited"
        assert time.monotonic() < deadline, "the server never listened"
        time.sleep(0.2)
    yield running
    running.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _step(tmp_path: Path, **env: str) -> tuple[Path, dict]:
    script = tmp_path / "tmp_step.py"
    script.write_text(STEP)
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
                "STEP_LOG": str(tmp_path / "step.log"), **env}
    return script, full_env


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    script, full_env = _step(tmp_path, **env)
    return subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=full_env, capture_output=True,
                          text=True, timeout=120)


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_a_handed_over_step_runs_in_a_worker_with_its_streams_folder_environment_arguments_and_status(server, tmp_path):
    proc = _run(tmp_path, "a1", "--flag", STEP_VALUE="hello", STEP_EXIT="3")
    assert proc.returncode == 3, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[0])
    assert seen["ppid"] == server.process.pid  # forked by the server, not this process
    assert seen["cwd"] == str(tmp_path) and seen["argv"] == ["a1", "--flag"] and seen["value"] == "hello"
    assert seen["socket"] is None  # processes the step starts run on their own
    assert "to stderr" in proc.stderr
    log = (tmp_path / "step.log").read_text()
    assert log.startswith("the step's own log\n")
    assert log.splitlines()[-1].startswith(f"step server: ran in worker {seen['pid']}: ")
    figures = step_server.parse_log_line(log)
    assert figures["maxrss_mb"] > 50 and figures["cpu_s"] >= 0  # torch is loaded in the worker
    assert step_server.parse_log_line("the step's own log\n") is None


def test_an_uncaught_exception_is_reported_as_python_reports_it(server, tmp_path):
    proc = _run(tmp_path, STEP_MODE="raise")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "ValueError: boom" in proc.stderr


def test_a_signal_to_the_script_reaches_its_worker(server, tmp_path):
    script, env = _step(tmp_path, STEP_MODE="sleep")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    worker = json.loads(proc.stdout.readline())["pid"]
    assert worker != proc.pid
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM  # the worker's end, passed on
    assert _gone(worker)


def test_a_killed_script_takes_its_worker_along(server, tmp_path):
    script, env = _step(tmp_path, STEP_MODE="sleep")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    worker = json.loads(proc.stdout.readline())["pid"]
    proc.kill()
    proc.wait(timeout=30)
    assert _gone(worker), "the worker outlived its script"


@pytest.mark.parametrize("env", [{step_server.ENV_SWITCH: "off"}, {"SLURM_JOB_ID": "7"},
                                 {step_server.ENV_SOCKET: "/nonexistent/socket"}])
def test_the_step_runs_in_its_own_process_where_the_hand_over_does_not_apply(server, tmp_path, env):
    proc = _run(tmp_path, **env)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[0])
    assert seen["ppid"] != server.process.pid
    assert "step server" not in (tmp_path / "step.log").read_text()


def test_the_server_declines_another_python_another_package_and_changed_sources(tmp_path):
    import advneurons

    server = step_server.StepServer(str(tmp_path / "unused"), None)
    good = {"executable": sys.executable, "package": str(Path(advneurons.__file__).resolve().parent)}
    assert server.decline_reason(good) is None
    assert "another Python" in server.decline_reason({**good, "executable": "/usr/bin/python9"})
    assert "another copy" in server.decline_reason({**good, "package": "/elsewhere/advneurons"})
    first = next(iter(server.sources))
    server.sources = {**server.sources, first: server.sources[first] - 1}  # as if the file was edited since
    assert "changed" in server.decline_reason(good)
    server.listener.close()


def test_no_server_is_started_under_slurm_or_when_switched_off(monkeypatch, tmp_path):
    monkeypatch.setenv(step_server.ENV_SWITCH, "off")
    assert step_server.start_for_run(ROOT / "workflow_scripts", tmp_path / "log") is None
    monkeypatch.delenv(step_server.ENV_SWITCH)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert step_server.start_for_run(ROOT / "workflow_scripts", tmp_path / "log") is None
    assert not (tmp_path / "log").exists()


def test_the_server_preloads_the_scripts_top_level_imports():
    modules = step_server.script_imports(ROOT / "workflow_scripts")
    assert {"advneurons.runtime", "advneurons.evaluation.robustness", "advneurons.workflow.step_server"} <= set(modules)
    assert step_server.preload(["advneurons.runtime", "advneurons.runtime.setup", "json"]) == []
    assert step_server.preload(["advneurons.no_such_package.module"])[0].startswith("advneurons.no_such_package.module")


def test_every_workflow_script_hands_itself_over_before_anything_else():
    import ast

    for path in sorted((ROOT / "workflow_scripts").glob("*.py")):
        body = [node for node in ast.parse(path.read_text()).body
                if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
        first, second = ast.unparse(body[0]), ast.unparse(body[1])
        assert first == "from advneurons.workflow.step_server import hand_over", path.name
        assert second == "hand_over(globals())", path.name
