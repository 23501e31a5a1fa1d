"""One results space per config (advneurons.config.run_space): names, ids and folders of run-level outputs."""

from pathlib import Path

import pytest
import yaml

from advneurons.config import run_space, settings
from advneurons.workflow import targets
from advneurons.workflow.plan import Plan

ROOT = Path(__file__).resolve().parents[2]


def validated(name: str, run: str | None = None, **changes) -> dict:
    config = yaml.safe_load((ROOT / name).read_text())
    config.pop("run", None)
    if run is not None:
        config["run"] = run
    config.update(changes)
    return settings.validate_config(config)


def test_run_name_defaults_to_the_config_file_named_last():
    assert run_space.run_name_from_configfiles([]) == "default"
    assert run_space.run_name_from_configfiles(["presets/quick.yaml"]) == "quick"
    assert run_space.run_name_from_configfiles(["config.yaml", "/tmp/My Run.v2.yaml"]) == "my-run-v2"
    assert run_space.run_name_from_configfiles(["/somewhere/config.yaml"]) == "default"
    config = {"seed": 1}
    assert run_space.fill_run_name(config, ["presets/cifar10_paper.yaml"])["run"] == "cifar10_paper"
    assert run_space.fill_run_name({"run": "mine"}, ["presets/quick.yaml"])["run"] == "mine"  # a set name stays


def test_every_preset_and_the_default_have_their_own_folder():
    folders = {Plan(validated(name)).run_dir for name in
               ("config.yaml", "presets/quick.yaml", "presets/cifar10_paper.yaml", "presets/cifar10_rehearsal.yaml")}
    assert len(folders) == 4 and all(f.startswith("results/runs/") for f in folders)
    for name in ("quick", "cifar10_paper", "cifar10_rehearsal"):
        stated = yaml.safe_load((ROOT / "presets" / f"{name}.yaml").read_text())["run"]
        assert stated == name  # the preset's folder carries its name even when the file is copied


def test_the_config_id_covers_every_setting_but_the_name():
    base = validated("presets/quick.yaml", run="a")
    same = validated("presets/quick.yaml", run="a")
    assert run_space.run_id(base) == run_space.run_id(same)
    renamed = validated("presets/quick.yaml", run="b")
    assert run_space.run_id(renamed).split("~")[1] == run_space.run_id(base).split("~")[1]
    changed = validated("presets/quick.yaml", run="a", seed=1)
    assert run_space.run_id(changed) != run_space.run_id(base)
    # a change the intermediates do not see (a table's column label) is still another run
    relabelled = validated("presets/quick.yaml", run="a")
    table = relabelled["robustness"]["table_iii"]
    label = next(iter(table))
    table["Renamed"] = table.pop(label)
    assert run_space.run_id(relabelled) != run_space.run_id(base)


def test_run_level_outputs_are_in_the_run_folder_and_intermediates_are_not():
    plan = Plan(validated("presets/quick.yaml"))
    files = targets.final_outputs(plan)
    run_level = [f for f in files if f.startswith(plan.run_dir + "/")]
    assert plan.landing_page in run_level and plan.run_file("findings.md") in run_level
    assert plan.run_file("tables/robustness.md") in run_level and plan.run_file("tables/final_robustness.md") in files
    # nothing else of the run writes outside results/<data id>/ or its own folder
    assert all(f.startswith((plan.run_dir + "/", f"results/{plan.data_id}/")) for f in files)
    assert not any(f.startswith(plan.run_dir) for f in files if "/models/" in f or "/robustness/" in f)
    assert plan.run_log("findings").startswith(f"logs/runs/{plan.run_id}/")
    assert plan.run_log("findings", "tsv") == f"benchmarks/runs/{plan.run_id}/findings.tsv"


def test_a_bad_run_name_is_refused_with_the_key():
    config = yaml.safe_load((ROOT / "presets/quick.yaml").read_text())
    config["run"] = "Has Spaces"
    with pytest.raises(settings.ConfigError, match="'run'"):
        settings.validate_config(config)
