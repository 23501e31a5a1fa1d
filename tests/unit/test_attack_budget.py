"""bench/attack_budget.py reads a run's black-box records: of one model's records under one attack name, only the
newest belongs to the run (a folder re-run after the attack's settings changed keeps the old ones)."""

import json
import os
import sys

from workflow_helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import attack_budget  # noqa: E402  (bench/ is not a package)


def _record(folder, stem, model, lr, mtime):
    folder.mkdir(parents=True, exist_ok=True)
    params = {"model_name": model, "attacks": {"spsa": {"type": "spsa", "eps": 32, "steps": 50, "lr": lr},
                                               "pgd": {"type": "pgd", "eps": 32}}}
    path = folder / f"{stem}.json"
    path.write_text(json.dumps({"params": params}))
    os.utime(path, (mtime, mtime))
    return path


def test_only_the_newest_record_of_a_model_and_attack_is_read(tmp_path):
    folder = tmp_path / "results" / "digits~x" / "robustness"
    # the older settings sort after the newer ones by name: the choice must go by time, not by order
    new = _record(folder / "vgg16-vanilla~a", "spsa~1111", "vgg16-vanilla", 0.02, 2_000_000)
    _record(folder / "vgg16-vanilla~a", "spsa~ffff", "vgg16-vanilla", 0.01, 1_000_000)
    other = _record(folder / "vgg16-pat~b", "spsa~ffff", "vgg16-pat", 0.01, 1_000_000)
    found = list(attack_budget.records(tmp_path, ("spsa",)))
    assert sorted((model, name, entry["lr"], path) for model, name, entry, path, _ in found) == [
        ("vgg16-pat", "spsa", 0.01, other), ("vgg16-vanilla", "spsa", 0.02, new)]
