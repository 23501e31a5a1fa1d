"""Sha256 records of checkpoints, pair sets and splits (advneurons.integrity), and byte-identical checkpoints."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from advneurons import data, integrity
from advneurons.config import settings
from advneurons.evaluation.pairs import FIELDS, PairSet, save_pairs
from advneurons.models import checkpoint
from advneurons.workflow.plan import Plan

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # the check's default cache lives under the working directory's .snakemake/: keep it out of the repository
    monkeypatch.chdir(tmp_path)


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save(model, path, meta):
    checkpoint.save_model(model, path, "vgg16", "digits", 0.0625, 10, meta)


# ------------------------------------------------------------------------------ byte-identical checkpoints
def test_equal_state_gives_equal_bytes_whatever_the_run_specific_metadata(tmp_path, tiny_vgg):
    """Two runs of one step differ in when and where they ran, and in their epoch times: not in the checkpoint."""
    meta_a = {"step": "train", "created": "2026-01-01T00:00:00+00:00", "seed": 3, "versions": {"threads": 1},
              "final": {"epoch": 1, "loss": 0.5, "seconds": 1.25}}
    meta_b = {**meta_a, "created": "2026-01-02T10:11:12+00:00", "versions": {"threads": 8, "slurm_job_id": "77"},
              "final": {"epoch": 1, "loss": 0.5, "seconds": 3.5}}
    save(tiny_vgg, tmp_path / "a" / "model.pt", meta_a)
    save(tiny_vgg, tmp_path / "b" / "model.pt", meta_b)
    assert sha(tmp_path / "a" / "model.pt") == sha(tmp_path / "b" / "model.pt")
    # still a plain weights_only checkpoint, which keeps what describes the model
    _, ckpt = checkpoint.load_model(tmp_path / "a" / "model.pt")
    assert ckpt["meta"] == {"step": "train", "seed": 3, "final": {"epoch": 1, "loss": 0.5}}


def test_one_changed_weight_changes_the_hash(tmp_path, tiny_vgg):
    save(tiny_vgg, tmp_path / "a.pt", {"seed": 3})
    with torch.no_grad():
        next(tiny_vgg.parameters()).view(-1)[0] += 1e-3
    save(tiny_vgg, tmp_path / "b.pt", {"seed": 3})
    assert sha(tmp_path / "a.pt") != sha(tmp_path / "b.pt")


def test_model_meta_drops_run_specific_keys_at_any_depth():
    meta = {"created": 1, "base_meta": {"versions": {}, "final": {"seconds": 2, "lr": 0.1}}, "rows": [{"seconds": 1}],
            "pair": ({"created": 0}, 5)}
    assert checkpoint.model_meta(meta) == {"base_meta": {"final": {"lr": 0.1}}, "rows": [{}], "pair": ({}, 5)}


# -------------------------------------------------------------------------------------- records written
def test_every_writer_leaves_a_matching_record(tmp_path, tiny_vgg):
    save(tiny_vgg, tmp_path / "model.pt", {})
    n = 4
    pairs = PairSet(*[np.zeros((n, 3, 32, 32), np.float32) if f in ("clean", "perturbed") else np.zeros(n, np.int64)
                      for f in FIELDS])
    save_pairs(pairs, tmp_path / "pairs.npz")
    data.save_split(data.Split(np.zeros((n, 3, 32, 32), np.uint8), np.arange(n)), tmp_path / "test.npz")
    for name in ("model.pt", "pairs.npz", "test.npz"):
        record = integrity.read_record(tmp_path / name)
        assert record["sha256"] == sha(tmp_path / name) and record["size"] == (tmp_path / name).stat().st_size
        assert record["mtime_ns"] == (tmp_path / name).stat().st_mtime_ns and record["file"] == name


# ------------------------------------------------------------------------------------------- the check
@pytest.fixture
def recorded(tmp_path):
    path = tmp_path / "results" / "model.pt"
    path.parent.mkdir()
    path.write_bytes(os.urandom(5000))
    integrity.write_record(path)
    return path


def test_unchanged_file_is_accepted_without_reading_it(recorded, monkeypatch):
    def no_hashing(path):
        raise AssertionError(f"{path} was hashed although size and mtime match its record")

    monkeypatch.setattr(integrity, "sha256_of", no_hashing)
    assert integrity.mismatches([recorded]) == []


def test_truncated_file_is_a_mismatch(recorded):
    expected = sha(recorded)
    recorded.write_bytes(recorded.read_bytes()[:1000])
    [bad] = integrity.mismatches([recorded])
    assert (bad.path, bad.expected, bad.found) == (str(recorded), f"5000 bytes with sha256 {expected}", "has 1000 bytes")
    assert integrity.read_record(recorded)["size"] == 5000  # the record is evidence: never rewritten on a mismatch


def test_same_size_other_bytes_is_a_mismatch(recorded):
    expected = integrity.read_record(recorded)["sha256"]
    blob = bytearray(recorded.read_bytes())
    blob[100] ^= 0xFF
    recorded.write_bytes(bytes(blob))
    [bad] = integrity.mismatches([recorded])
    assert bad.expected == f"5000 bytes with sha256 {expected}" and bad.found == f"has sha256 {sha(recorded)}"


def test_touched_file_is_hashed_once_then_found_in_the_cache(recorded, monkeypatch, tmp_path):
    record = integrity.record_path(recorded).read_bytes()
    stat = recorded.stat()
    os.utime(recorded, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, another mtime (Snakemake's touch)
    calls = []
    real = integrity.sha256_of
    monkeypatch.setattr(integrity, "sha256_of", lambda p: calls.append(p) or real(p))
    cache = tmp_path / "cache" / "integrity.json"
    assert integrity.mismatches([recorded], cache) == [] and len(calls) == 1
    assert integrity.mismatches([recorded], cache) == [] and len(calls) == 1  # remembered: not hashed again
    assert integrity.mismatches([recorded], None) == [] and len(calls) == 2  # without the cache, hashed each time
    assert integrity.record_path(recorded).read_bytes() == record  # the record itself is never rewritten
    # a cache entry stands for one size, mtime and hash: the same size, other bytes and mtime is hashed again
    blob = bytearray(recorded.read_bytes())
    blob[0] ^= 1
    recorded.write_bytes(bytes(blob))
    [bad] = integrity.mismatches([recorded], cache)
    assert bad.found == f"has sha256 {sha(recorded)}" and len(calls) == 3


def test_file_without_record_and_missing_file_are_accepted(tmp_path):
    # results written before records existed are not blocked; a missing file is Snakemake's to make
    old = tmp_path / "old.pt"
    old.write_bytes(b"anything")
    assert integrity.mismatches([old, tmp_path / "absent.pt"]) == []


def test_damaged_record_is_reported(recorded):
    integrity.record_path(recorded).write_text('{"sha2')
    [bad] = integrity.mismatches([recorded])
    assert "record is damaged" in bad.found


# ------------------------------------------------------------------------------------ the run's files
def quick_plan():
    return Plan(settings.validate_config(yaml.safe_load((ROOT / "presets" / "quick.yaml").read_text())))


def test_run_files_cover_every_checkpoint_pair_set_and_split():
    plan = quick_plan()
    files = integrity.run_files(plan)
    for m in [*plan.trained, *plan.external, *plan.defended]:
        assert plan.model_path(m) in files
    assert plan.pairs_path(next(iter(plan.analysed)), plan.sensitivity_attack) in files
    # the split names the check lists are those prepare_dataset writes
    assert [f"results/{plan.data_id}/data/{s}.npz" for s in data.SPLITS] == [f for f in files if "/data/" in f]


def test_check_run_names_the_file_and_the_command_and_deletes_nothing(tmp_path, tiny_vgg):
    plan = quick_plan()
    model = Path(plan.model_path(next(iter(plan.trained))))
    save(tiny_vgg, model, {})
    integrity.check_run(plan)  # intact: passes
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(integrity.IntegrityError) as err:
        integrity.check_run(plan, integrity.command_options([tmp_path / "presets" / "quick.yaml"]))
    text = str(err.value)
    assert f"{model}: its record {model}.sha256.json says" in text and "the file has 100 bytes" in text
    assert f"rm {model}\n" in text
    assert f".venv/bin/snakemake --cores 2 {model} --configfile presets/quick.yaml" in text
    assert model.stat().st_size == 100 and integrity.record_path(model).exists()


def test_the_check_loads_no_torch():
    """It runs at every parse of the workflow, which otherwise never imports torch (seconds per parse)."""
    import subprocess
    import sys

    code = ("import sys, yaml; from advneurons import integrity; from advneurons.config import settings; "
            "from advneurons.workflow.plan import Plan; "
            f"integrity.check_run(Plan(settings.validate_config(yaml.safe_load(open({str(ROOT / 'presets' / 'quick.yaml')!r})))), cache=None); "
            "assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
