"""Drill: a truncated checkpoint of a finished run stops the next run (and its dry run) before any job, with one
message naming the file, what its sha256 record says and the command that re-makes it; every output of the
finished run stays byte for byte; and that command re-makes the checkpoint with the recorded bytes
(advneurons.integrity, called from rules/common.smk)."""

import hashlib
import json

import yaml

from workflow_helpers import one_model_config, snakemake




def digests(workdir) -> dict[str, str]:
    """sha256 of every file under results/ and logs/ (records included), by path relative to `workdir`."""
    return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in ("results", "logs") for p in sorted((workdir / folder).rglob("*")) if p.is_file()}


def test_truncated_checkpoint_stops_the_run_before_any_job_and_loses_nothing(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(one_model_config()))
    first = snakemake(tmp_path, "all")
    assert first.returncode == 0, first.stderr[-3000:]
    [model] = (tmp_path / "results").glob("*/models/*/model.pt")
    rel = str(model.relative_to(tmp_path))
    record = json.loads(model.with_name("model.pt.sha256.json").read_text())
    assert record["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()  # written when it was trained

    before = digests(tmp_path)
    blob = model.read_bytes()
    damaged = blob[: len(blob) // 2]
    model.write_bytes(damaged)

    for args in (["--dry-run", "all"], ["all"]):
        proc = snakemake(tmp_path, *args)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out[-3000:]
        assert (f"{rel}: its record {rel}.sha256.json says {record['size']} bytes with sha256 {record['sha256']}; "
                f"the file has {len(damaged)} bytes") in out, out[-3000:]
        assert f"rm {rel}\n" in out and f".venv/bin/snakemake --cores 2 {rel}" in out
        assert "Building DAG of jobs" not in out  # stopped while the workflow was parsed: no job was scheduled

    after = digests(tmp_path)
    assert after.pop(rel) == hashlib.sha256(damaged).hexdigest()  # nothing deleted, not even the damaged file
    before.pop(rel)
    assert after == before  # every other file byte for byte, none deleted, none added

    # The recovery the message gives re-trains the model: the same config and seed give the recorded bytes.
    model.unlink()
    again = snakemake(tmp_path, rel)
    assert again.returncode == 0, again.stderr[-3000:]
    assert hashlib.sha256(model.read_bytes()).hexdigest() == record["sha256"]
