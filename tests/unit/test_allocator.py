"""runtime.keep_freed_memory (called by runtime.setup in every step): freed tensor memory stays in the process, so
that a step's next call does not fault the same pages in again. Each case runs in a fresh interpreter: glibc's
thresholds, once set, stay set for the process."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the thresholds are glibc's")

PROBE = """
import json, torch
from advneurons import runtime
runtime.setup(1, 0)
def heap():  # the main heap's extent in /proc/self/maps
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            return tuple(int(v, 16) for v in line.split()[0].split("-"))
    return 0, 0
lo, hi = heap()
before = hi - lo
held = [torch.ones(4 << 20) for _ in range(4)]  # a forward pass's pattern: 4 x 16 MiB held together, then freed
lo, hi = heap()
in_heap = [lo <= t.data_ptr() < hi for t in held]
del held
lo, hi = heap()
print(json.dumps({"in_heap": in_heap, "kept_mib": (hi - lo - before) >> 20,
                  "allocator": runtime.versions()["allocator"]}))
"""


def last_line(code: str, **env) -> str:
    """The last line `code` prints in a fresh interpreter, run with `env` (ADVNEURONS_MALLOC only from there)."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**{k: v for k, v in os.environ.items() if k != "ADVNEURONS_MALLOC"}, **env})
    return proc.stdout.strip().splitlines()[-1]


def probe(**env) -> dict:
    return json.loads(last_line(PROBE, **env))


def test_steps_reuse_freed_memory_instead_of_faulting_it_in_again():
    kept, default = probe(), probe(ADVNEURONS_MALLOC="default")
    assert kept["allocator"] == "mmap_threshold=33554432,trim_threshold=1073741824"
    assert default["allocator"] == "default"
    # glibc's default maps each 16 MiB block on its own and unmaps it when freed, so the next step's blocks are
    # faulted in again page by page; with the step's thresholds they come from the heap, which keeps them
    assert not any(default["in_heap"])
    assert all(kept["in_heap"]) and kept["kept_mib"] >= 60


TRAIN = """
import hashlib, torch
import torch.nn.functional as F
from advneurons import runtime
from advneurons.models.architectures import build_model
runtime.setup(1, 0)
model = runtime.fast_layout(build_model("resnet18", "digits", width=0.125))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
x, y = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
for _ in range(3):
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
print(hashlib.sha256(b"".join(p.detach().contiguous().numpy().tobytes() for p in model.state_dict().values())).hexdigest())
"""


def test_where_memory_comes_from_changes_no_result():
    """Three training steps give bit-identical weights with glibc's defaults and with the steps' thresholds."""
    assert last_line(TRAIN) == last_line(TRAIN, ADVNEURONS_MALLOC="default")
