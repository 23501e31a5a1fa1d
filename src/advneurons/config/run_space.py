"""Which results space a config's run-level outputs (tables, findings, figures, the report's landing page) go to.

Intermediates (``results/<data id>/...``) are shared by every config whose settings ids agree: a preset that
trains the same model as the default run reuses it. The run-level outputs are not: the quick preset's toy
robustness table must never replace the default run's. Each config therefore writes them under
``results/runs/<run>~<config id>/``, where ``run`` is a readable name (the config's ``run`` key, else the
name of the config file it came from) and the config id hashes every other setting of the validated config,
so two configs that differ in anything never share a folder, and the same config always finds its own.
"""

from __future__ import annotations

import re
from pathlib import Path

from advneurons.config.settings import ConfigError, make_id

RUNS_DIR = "results/runs"
RUN_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
DEFAULT_RUN_NAME = "default"  # the run of the workflow's own config.yaml


def run_name_from_configfiles(configfiles) -> str:
    """The readable name of a run without a ``run`` key: the stem of the last config file named on the command
    line (the preset's name), lower-cased with anything but letters, digits, ``_`` and ``-`` made ``-``; the
    workflow's config.yaml (no file named) is the default run."""
    if not configfiles:
        return DEFAULT_RUN_NAME
    stem = Path(str(list(configfiles)[-1])).stem.lower()
    name = re.sub(r"[^a-z0-9_-]+", "-", stem).strip("-_")
    if name == "config":
        return DEFAULT_RUN_NAME
    return name or DEFAULT_RUN_NAME


def fill_run_name(config: dict, configfiles) -> dict:
    """Give a config without a ``run`` key the name of the file it came from (before validation, which checks
    the name)."""
    if config.get("run") is None:
        config["run"] = run_name_from_configfiles(configfiles)
    return config


def run_id(config: dict) -> str:
    """``<run>~<hash of every other setting>`` of a validated config."""
    name = config.get("run", DEFAULT_RUN_NAME)
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise ConfigError(f"config key 'run': {name!r} is not a run name (lower-case letters, digits, '_' and '-', "
                          "starting with a letter or digit)")
    return make_id(name, {k: v for k, v in config.items() if k != "run"})


def run_dir(config: dict) -> str:
    """The folder of this config's tables, findings, figures and landing page."""
    return f"{RUNS_DIR}/{run_id(config)}"
