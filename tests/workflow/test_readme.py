"""Every command line in the README's code blocks runs as written (a dry run where it needs a cluster or
CIFAR-10, `make -n` for the make targets, which install and then run the commands tested elsewhere)."""

import re
import subprocess

import pytest
from workflow_helpers import ROOT, SNAKEMAKE

PLACEHOLDERS = {"<account>": "test_account", "<partition>": "cpu", "<cpu partition>": "cpu"}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)  # continuation lines
        for line in joined.splitlines():
            line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
            if line:
                commands.append(line)
    return commands


def test_the_readme_has_its_commands():
    commands = readme_commands()
    assert "make run" in commands and "make test" in commands
    assert sum("--profile profiles/slurm" in c for c in commands) == 2


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_written(command):
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    assert "<" not in command, f"unfilled placeholder in {command!r}"
    words = command.split()
    if words[0] == "make" or (words[0].startswith("CORES=") and words[1] == "make"):
        proc = subprocess.run(["make", "-n", *words[words.index("make") + 1:]], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return
    assert words[0] == ".venv/bin/snakemake", f"README commands run the installed snakemake: {command!r}"
    # The whole command line as written, planned only: the cluster and the CIFAR-10 archive are not here.
    proc = subprocess.run([str(SNAKEMAKE), *words[1:], "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Job stats" in proc.stdout + proc.stderr or "Nothing to be done" in proc.stdout + proc.stderr
