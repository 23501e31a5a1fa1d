# Two entry points, both self-installing on a fresh machine:
#   make run    install, then run the whole workflow on the default config (embedded digits dataset)
#   make test   install, then run the test suite (unit tests, workflow test, lint)
#   make lock   re-resolve the pinned environment (envs/requirements.lock) from pyproject.toml's ranges
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: install lock run test clean

install: $(VENV)/.installed

# The environment is pinned: envs/requirements.lock lists every package at its exact version (torch and
# torchvision included); `make lock` re-resolves it from pyproject.toml's ranges. tests/unit/test_environment.py
# fails when the installed versions drift from the lock.
$(VENV)/.installed: pyproject.toml envs/requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r envs/requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	# auto-lirpa 0.3 pins torch<1.13 in its metadata; advneurons.psn.lirpa_compat adapts it to current torch.
	$(BIN)/pip install --quiet --no-deps "auto-lirpa==0.3"
	touch $@

lock:
	PYTHON=$(PYTHON) bash envs/refresh_lock.sh

run: install
	$(BIN)/snakemake --cores $(CORES) all

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf results logs benchmarks .snakemake
