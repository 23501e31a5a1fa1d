#!/usr/bin/env bash
# Run by Snakemake after it creates the conda environment (--sdm conda).
# auto-lirpa 0.3's metadata pins torch<1.13; install it without dependencies (see advneurons.lirpa_compat).
set -euo pipefail
pip install --no-deps "auto-lirpa==0.3"
