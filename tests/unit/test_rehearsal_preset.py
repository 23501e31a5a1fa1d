"""The rehearsal preset is the paper preset with only its counts cut down (presets/cifar10_rehearsal.yaml)."""

from pathlib import Path

import pytest
import yaml

from advneurons.config import settings

ROOT = Path(__file__).resolve().parents[2]

# Leaf keys that count something (images, epochs, iterations, samples, draws, repeats, nodes): the rehearsal
# may use fewer. None means "all of them", more than any number.
COUNT_KEYS = {"epochs", "steps", "search_steps", "samples", "n_images", "n_per_class", "dyn_images", "n_random",
              "eot_samples", "select_images", "n_val", "last_nodes", "pgd_steps", "n_images_by_attack", "max_images",
              "train", "val", "test", "mem_budget_mb", "queries"}
# Lists that sweep a value (or list repeated units of one kind): the rehearsal may keep a sub-list.
SWEEP_LISTS = {("sweeps", "steps_values"), ("sweeps", "eps_values"), ("sns", "suppression", "betas"),
               ("meansparse", "alphas"), ("sns_layer_range", "first_layers", "*"),
               ("sns", "ratios", "perturbations", "*"), ("psn", "heatmaps", "layers", "*"), ("defenses", "training"),
               ("robustness", "table_i")}


def _load(name):
    return settings.validate_config(yaml.safe_load((ROOT / "presets" / name).read_text()))


def _matches(path, pattern):
    return len(path) == len(pattern) and all(p == "*" or p == k for k, p in zip(path, pattern))


def _fewer(rehearsal, paper) -> bool:
    if paper is None:
        return True
    return rehearsal is not None and rehearsal <= paper


def _is_sublist(short, long) -> bool:
    it = iter(long)
    return bool(short) and all(any(item == other for other in it) for item in short)


def differences(rehearsal, paper, path=()):
    """(path, why) of every difference that is not a cut-down count."""
    if isinstance(paper, dict) and isinstance(rehearsal, dict):
        out = []
        if path == ("training",):  # trainings left out: only further repeats of a kept SNS-rand
            for name in set(paper) - set(rehearsal):
                t = paper[name]
                if not (t.get("variant") == "rand" and t.get("repeat", 0) > 0):
                    out.append((path + (name,), "training left out"))
        else:  # a count absent from the paper preset means "all"
            for key in set(rehearsal) ^ set(paper):
                if key not in COUNT_KEYS or key not in rehearsal:
                    out.append((path + (key,), "key in one preset only"))
                else:
                    out += differences(rehearsal[key], None, path + (key,))
        for key in set(rehearsal) & set(paper):
            out += differences(rehearsal[key], paper[key], path + (key,))
        return out
    if rehearsal == paper:
        return []
    if isinstance(paper, list) and any(_matches(path, p) for p in SWEEP_LISTS):
        return [] if _is_sublist(rehearsal, paper) else [(path, "not a sub-list of the paper's")]
    if path and (path[-1] in COUNT_KEYS or (len(path) > 1 and path[-2] in COUNT_KEYS)):
        numbers = all(v is None or isinstance(v, (int, float)) for v in (rehearsal, paper))
        return [] if numbers and _fewer(rehearsal, paper) else [(path, f"count {rehearsal!r} is not below {paper!r}")]
    return [(path, f"{rehearsal!r} != {paper!r}")]


def test_rehearsal_differs_from_the_paper_preset_only_in_counts():
    rehearsal, paper = _load("cifar10_rehearsal.yaml"), _load("cifar10_paper.yaml")
    # each preset's results go to a folder of its own (its `run` name); everything else must agree
    assert (rehearsal.pop("run"), paper.pop("run")) == ("cifar10_rehearsal", "cifar10_paper")
    assert differences(rehearsal, paper) == []
    # and it does cut: full width on CIFAR-10, few images, one epoch, few PSN nodes
    assert rehearsal["dataset"]["max_images"]["train"] <= 500 and rehearsal["dataset"]["max_images"]["test"] <= 100
    assert {a["width"] for a in rehearsal["architectures"].values()} == {1.0}
    assert {t["epochs"] for t in rehearsal["training"].values()} == {1}
    assert rehearsal["psn"]["last_nodes"] is not None


@pytest.mark.parametrize("change, why", [
    ({"architectures": {"vgg16": {"width": 0.5}}}, "width"),
    ({"attacks": {"pgd": {"eps": 4}}}, "eps"),
    ({"training": {"nat": {"epochs": 200}}}, "count"),
    ({"sweeps": {"eps_values": [8, 1]}}, "sub-list"),
    ({"psn": {"bound_method": "CROWN-IBP"}}, "bound_method"),
])
def test_the_check_catches_a_setting_that_is_not_a_count(change, why):
    rehearsal, paper = _load("cifar10_rehearsal.yaml"), _load("cifar10_paper.yaml")

    def merge(base, extra):
        for k, v in extra.items():
            if isinstance(v, dict) and isinstance(base.get(k), dict):
                merge(base[k], v)
            else:
                base[k] = v

    merge(rehearsal, change)
    found = differences(rehearsal, paper)
    assert found and any(why in str(item) for item in found), found
