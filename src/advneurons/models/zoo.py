"""RobustBench model-zoo entries as external models: the architecture comes from the `robustbench` package, the
weights from the file RobustBench itself would use (``<model_dir>/<dataset>/<threat_model>/<name>.pt``), loaded
with weights_only=True (robustbench's own loader unpickles anything, and downloads when the file is missing).
Offline, that file is placed there by hand; without it the error says where and which file.

robustbench 1.1.1 imports the module `autoattack`, which PyPI's AutoAttack (pyautoattack) installs under its own
name; :func:`_import_zoo` maps one to the other before the import (tests/unit/test_external_models.py).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from advneurons.models.external import ExternalModelError

THREAT_MODELS = ("Linf", "L2", "corruptions")
DATASETS = ("cifar10", "cifar100", "imagenet")


class ZooError(ExternalModelError):
    """A RobustBench entry cannot be used; the message says which entry or file and why."""


def _import_zoo():
    import pyautoattack

    sys.modules.setdefault("autoattack", pyautoattack)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources and torch.jit deprecation notices at import
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    return model_dicts, BenchmarkDataset, ThreatModel


def _check(name: str, threat_model: str, dataset: str) -> None:
    if threat_model not in THREAT_MODELS:
        raise ZooError(f"RobustBench threat model {threat_model!r} is not one of {', '.join(THREAT_MODELS)}")
    if dataset not in DATASETS:
        raise ZooError(f"RobustBench dataset {dataset!r} is not one of {', '.join(DATASETS)}")


def weights_path(name: str, threat_model: str = "Linf", dataset: str = "cifar10", model_dir: str = "models") -> Path:
    """Where RobustBench keeps the weights of an entry (no import of robustbench needed)."""
    _check(name, threat_model, dataset)
    return Path(model_dir) / dataset / threat_model / f"{name}.pt"


def architecture(name: str, threat_model: str = "Linf", dataset: str = "cifar10", model_dir: str = "models"):
    """The untrained network of a zoo entry. The weights file must exist: a missing file is reported here,
    before anything is built, with where to put it."""
    path = weights_path(name, threat_model, dataset, model_dir)
    model_dicts, BenchmarkDataset, ThreatModel = _import_zoo()
    entries = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]
    if name not in entries:
        close = sorted(n for n in entries if n.lower()[:4] == name.lower()[:4])[:5]
        raise ZooError(f"RobustBench has no {dataset} {threat_model} model {name!r}"
                       + (f"; similar names: {', '.join(close)}" if close else ""))
    if not path.is_file():
        gdrive = entries[name].get("gdrive_id")
        raise ZooError(f"RobustBench model {name!r} ({dataset}, {threat_model}): weights file {path} not found. "
                       f"Offline, download it by hand (Google Drive id {gdrive}) and place it at {path}, the file "
                       "robustbench.utils.load_model would use")
    return entries[name]["model"]()
