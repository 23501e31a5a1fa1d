"""The installed environment is the pinned one (envs/requirements.lock): numbers in the README and the tests
were produced with these versions, and an unpinned install changes them (tabulate's number format, torch's
kernels)."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

LOCK = Path(__file__).resolve().parents[2] / "envs" / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> tuple[str, dict[str, str]]:
    """(Python major.minor named in the header, {canonical name: version}); every non-comment line must be a pin."""
    text = path.read_text()
    python = re.search(r"\(Python (\d+\.\d+)", text)
    if python is None:
        raise ValueError(f"{path}: the header names no Python version")
    pins = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: not an exact pin: {line!r}")
        pins[canonical(match.group(1))] = match.group(2)
    return python.group(1), pins


def test_lock_pins_every_package_exactly_with_torch_and_torchvision():
    _, pins = read_lock()
    assert {"torch", "torchvision", "pandas", "tabulate", "snakemake", "pyautoattack"} <= set(pins)
    assert "auto-lirpa" not in pins  # installed with --no-deps: its metadata pins torch<1.13


def test_read_lock_refuses_ranges(tmp_path):
    bad = tmp_path / "lock"
    bad.write_text("# (Python 3.11)\ntorch>=2.2\n")
    with pytest.raises(ValueError, match="not an exact pin"):
        read_lock(bad)


def test_installed_versions_match_the_lock():
    python, pins = read_lock()
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == python, (
        f"the lock was made for Python {python}; this is {sys.version.split()[0]} (make lock re-resolves it)")
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    drift = {name: (want, installed.get(name, "missing")) for name, want in pins.items()
             if installed.get(name) != want}
    assert not drift, ("installed versions differ from envs/requirements.lock (run `make install`, or `make lock` "
                       f"to re-pin): {drift}")
    assert installed.get("auto-lirpa") == "0.3"
