"""A throw-away single-node SLURM cluster on loopback, for the executor-plugin integration test.

Needs root and Debian's slurmctld, slurmd and munge (installed with apt if missing). Everything the
cluster writes lives under one directory, except slurm.conf itself, which must sit at the compiled-in
/etc/slurm/slurm.conf: the jobstep executor strips SLURM_* variables (SLURM_CONF too) before its nested
srun. The file is written only if no other slurm.conf is there, and removed afterwards. There is no
accounting storage, so `sacct` does not work and the workflow must query job states with
`--slurm-status-command squeue`; MinJobAge keeps finished jobs visible to squeue for long enough.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# advneurons test cluster (removed when the test ends)\n"


def _conf_is_ours() -> bool:
    return SYSTEM_CONF.exists() and SYSTEM_CONF.read_text().startswith(MARKER)


def available() -> str | None:
    """None if a cluster can be started here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "needs root to start munged, slurmctld and slurmd"
    if SYSTEM_CONF.exists() and not _conf_is_ours():
        return f"{SYSTEM_CONF} belongs to a real SLURM installation; not touching it"
    if not all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch", "squeue")):
        if not shutil.which("apt-get"):
            return "SLURM is not installed and apt-get is not available"
        proc = subprocess.run(
            ["apt-get", "install", "-y", "-qq", *PACKAGES],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            proc = subprocess.run(
                ["apt-get", "install", "-y", "-qq", *PACKAGES],
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, capture_output=True, text=True,
            )
            if proc.returncode != 0:
                return f"apt-get install {' '.join(PACKAGES)} failed: {proc.stderr[-500:]}"
    return None


def _slurm_conf(root: Path, host: str, cpus: int, mem_mb: int) -> str:
    return MARKER + f"""\
ClusterName=advneurons-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=3600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@contextmanager
def slurm_cluster(root: Path, mem_mb: int = 16000):
    """Start munged, slurmctld and slurmd under `root`; yield the environment to use; stop them after."""
    root = Path(root)
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    if SYSTEM_CONF.exists() and not _conf_is_ours():
        raise RuntimeError(f"{SYSTEM_CONF} exists and is not the test cluster's")
    conf = SYSTEM_CONF
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(_slurm_conf(root, host, cpus, mem_mb))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    socket_path = root / "munge" / "munge.socket"
    env["MUNGE_SOCKET"] = str(socket_path)  # read by nothing in SLURM; kept for debugging with munge -S
    started: list[subprocess.Popen] = []
    try:
        started.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={socket_path}",
             f"--pid-file={root / 'munge' / 'munged.pid'}", f"--log-file={root / 'munge' / 'munged.log'}",
             f"--seed-file={root / 'munge' / 'munged.seed'}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        ))
        _wait_for(lambda: socket_path.exists(), "munged socket")
        # SLURM's munge plugin finds the socket through AuthInfo.
        with open(conf, "a") as fh:
            fh.write(f"AuthInfo=socket={socket_path}\n")
        started.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        started.append(subprocess.Popen(["slurmd", "-D", "-N", host, "-f", str(conf)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait_for(lambda: _node_idle(env), "the node to become idle", timeout=60)
        yield env
    finally:
        for proc in reversed(started):
            proc.terminate()
        for proc in reversed(started):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if _conf_is_ours():
            SYSTEM_CONF.unlink()


def _node_idle(env) -> bool:
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
    return proc.returncode == 0 and "idle" in proc.stdout


def _wait_for(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


def slurm_jobs(env) -> list[dict]:
    """All jobs the controller still remembers (MinJobAge), with state and comment."""
    proc = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%k|%j"], env=env,
                          capture_output=True, text=True, check=True)
    jobs = []
    for line in proc.stdout.splitlines():
        job_id, state, comment, name = line.split("|", 3)
        jobs.append({"id": job_id, "state": state, "comment": comment, "name": name})
    return jobs
