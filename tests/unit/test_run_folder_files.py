"""The bench scripts that read a finished run (run_profile, preset_cost --run, attack_budget) read only its latest
jobs: a folder re-run after a setting changed keeps the older jobs' files beside the new ones, under other
settings hashes."""

import json
import os
import sys

from workflow_helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import attack_budget  # noqa: E402  (bench/ is not a package)
import run_profile  # noqa: E402


def _touch(path, mtime, text=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (mtime, mtime))
    return path


def test_of_files_differing_only_in_settings_hashes_the_newest_is_the_runs(tmp_path, capsys):
    base = tmp_path / "benchmarks" / "digits~1354d5be" / "evaluate_attack"
    # the older settings sort after the newer ones by name: the choice must go by time, not by order
    new = _touch(base / "vgg16-pat~d777d812" / "spsa~1111aaaa.tsv", 2_000_000)
    old = _touch(base / "vgg16-pat~d777d812" / "spsa~ffff0000.tsv", 1_000_000)
    other_attack = _touch(base / "vgg16-pat~d777d812" / "nattack~ffff0000.tsv", 1_000_000)
    retrained = _touch(base / "vgg16-vanilla~22222222" / "spsa~1111aaaa.tsv", 3_000_000)
    before_retraining = _touch(base / "vgg16-vanilla~eeeeeeee" / "spsa~1111aaaa.tsv", 1_000_000)
    suffixed = _touch(base / "vgg16-vanilla~22222222" / "pgd~47d19fff-tip_bn.tsv", 1_000_000)
    found = run_profile.current_files(tmp_path.rglob("*.tsv"))
    assert found == sorted([new, other_attack, retrained, suffixed])
    printed = capsys.readouterr().out
    assert str(old) in printed and str(before_retraining) in printed


def _record(folder, stem, model, lr, mtime):
    params = {"model_name": model, "attacks": {"spsa": {"type": "spsa", "eps": 32, "steps": 50, "lr": lr},
                                               "pgd": {"type": "pgd", "eps": 32}}}
    return _touch(folder / f"{stem}.json", mtime, json.dumps({"params": params}))


def test_attack_budget_reads_the_latest_black_box_records(tmp_path):
    folder = tmp_path / "results" / "digits~1354d5be" / "robustness"
    new = _record(folder / "vgg16-vanilla~957d56b4", "spsa~1111aaaa", "vgg16-vanilla", 0.02, 2_000_000)
    _record(folder / "vgg16-vanilla~957d56b4", "spsa~ffff0000", "vgg16-vanilla", 0.01, 1_000_000)
    other = _record(folder / "vgg16-pat~d777d812", "spsa~ffff0000", "vgg16-pat", 0.01, 1_000_000)
    found = list(attack_budget.records(tmp_path, ("spsa",)))
    assert sorted((model, name, entry["lr"], path) for model, name, entry, path, _ in found) == [
        ("vgg16-pat", "spsa", 0.01, other), ("vgg16-vanilla", "spsa", 0.02, new)]
