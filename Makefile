# Two entry points, both self-installing on a fresh machine:
#   make run    install, then run the whole workflow on the default config (embedded digits dataset)
#   make test   install, then run the test suite (unit tests, workflow test, lint)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: install run test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch/torchvision from the standard index (CUDA wheels; they also run on CPU-only machines).
	$(BIN)/pip install --quiet torch torchvision
	$(BIN)/pip install --quiet -e ".[workflow,test]"
	# auto-lirpa 0.3 pins torch<1.13 in its metadata; advneurons.lirpa_compat adapts it to current torch.
	$(BIN)/pip install --quiet --no-deps "auto-lirpa==0.3"
	touch $@

run: install
	$(BIN)/snakemake --cores $(CORES) all

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf results logs benchmarks .snakemake
