"""Sha256 records of the large files a run reads (checkpoints, pair sets, dataset splits), and the check of those
files against their records before any job of a run is scheduled.

Each writer (models.checkpoint.save_model, evaluation.pairs.save_pairs, data.save_split) leaves a record
``<file>.sha256.json`` beside the file it has just written: the file's sha256 and, as a cache key, its size and
mtime_ns. The workflow checks every file of the run that has a record (:func:`check_run`, called from
rules/common.smk in the process that schedules the jobs): a damaged file (truncated, overwritten, unreadable)
stops the run with one message that names it and the command that recovers it, before Snakemake can start a
job on it or delete any output. Nothing here deletes anything.

Plain Python (hashlib, json; no torch), so the check costs no import at parse time. A file is hashed once per
(size, mtime_ns) under which it was found intact (remembered in ``.snakemake/advneurons/``): a parse of the
workflow costs one ``stat`` per recorded file once each has been seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

RECORD_SUFFIX = ".sha256.json"
# Where the check remembers files found intact (relative to the working directory, beside Snakemake's own state).
CHECK_CACHE = Path(".snakemake") / "advneurons" / "integrity_cache.json"


class IntegrityError(RuntimeError):
    """Files a run reads do not match their sha256 records; the message names each file and how to recover."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_path(path: Path | str) -> Path:
    """The record beside `path`: ``model.pt`` -> ``model.pt.sha256.json``."""
    path = Path(path)
    return path.with_name(path.name + RECORD_SUFFIX)


def _write(record: dict, path: Path) -> None:
    target = record_path(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_record(path: Path | str, sha256: str | None = None) -> dict:
    """Record the sha256 of the file at `path` (just written), with its size and mtime_ns; `sha256`: the digest
    when the writer already has it (computed from the bytes it wrote), else the file is read. Returns the record."""
    path = Path(path)
    stat = path.stat()
    record = {"file": path.name, "sha256": sha256 or sha256_of(path), "size": stat.st_size,
              "mtime_ns": stat.st_mtime_ns}
    _write(record, path)
    return record


def read_record(path: Path | str) -> dict | None:
    """The record of `path`; None when there is none. A record that cannot be parsed raises ValueError."""
    target = record_path(path)
    try:
        text = target.read_text()
    except FileNotFoundError:
        return None
    record = json.loads(text)
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str) or not isinstance(record.get("size"), int):
        raise ValueError(f"{target} is not a sha256 record")
    return record


@dataclass(frozen=True)
class Mismatch:
    """A file that does not match its record: `expected` what the record says, `found` what is there."""

    path: str
    expected: str
    found: str

    def describe(self) -> str:
        return f"{self.path}: its record {record_path(self.path)} says {self.expected}; the file {self.found}"


def _read_cache(cache: Path) -> dict:
    try:
        data = json.loads(Path(cache).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(data: dict, cache: Path) -> None:
    cache = Path(cache)
    tmp = cache.with_name(f".{cache.name}.tmp{os.getpid()}")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, cache)
    except OSError:  # a read-only working directory only loses the cache
        pass
    finally:
        if tmp.exists():
            tmp.unlink()


def mismatches(paths, cache: Path | str | None = CHECK_CACHE) -> list[Mismatch]:
    """The files among `paths` that differ from their records. Files that do not exist are Snakemake's to make,
    and an existing file without a record (results made before records were written, or a file put there by
    hand) is accepted: neither is reported.

    Reading every file at every parse would cost seconds on a large run, so a file is hashed only when its
    (size, mtime_ns) is neither the one its record was written with nor one under which it was found intact
    before; those are remembered in `cache` (path -> size, mtime_ns, sha256; None: no cache). Snakemake
    touches each output after its job, so each new file is hashed once, at the first parse after the job.
    A file whose size differs from its record's is reported without reading it. Records are never rewritten
    here: they are the evidence of what was written."""
    known = _read_cache(cache) if cache is not None else {}
    learned = False
    found: list[Mismatch] = []
    for path in dict.fromkeys(str(p) for p in paths):  # each file once, in order
        if not os.path.isfile(path):
            continue
        try:
            record = read_record(path)
        except (OSError, ValueError) as exc:
            found.append(Mismatch(path, "something readable", f"cannot be checked: the record is damaged ({exc})"))
            continue
        if record is None:
            continue
        expected = f"{record['size']} bytes with sha256 {record['sha256']}"
        stat = os.stat(path)
        if stat.st_size != record["size"]:  # truncated or overwritten: no need to read it
            found.append(Mismatch(path, expected, f"has {stat.st_size} bytes"))
            continue
        seen = [stat.st_size, stat.st_mtime_ns, record["sha256"]]
        if stat.st_mtime_ns == record.get("mtime_ns") or known.get(path) == seen:
            continue
        try:
            actual = sha256_of(Path(path))
        except OSError as exc:
            found.append(Mismatch(path, expected, f"cannot be read ({exc})"))
            continue
        if actual != record["sha256"]:
            found.append(Mismatch(path, expected, f"has sha256 {actual}"))
            continue
        known[path], learned = seen, True
    if learned and cache is not None:
        _write_cache(known, cache)
    return found


def run_files(plan) -> list[str]:
    """The files of a run (an advneurons.workflow.plan.Plan) that carry records: the checkpoints of its trained,
    layer-range, imported and defended models, their pair sets under every attack of the config, and the
    dataset splits. Most of the pair paths do not exist (not every model is attacked by every attack); a
    missing file costs one stat."""
    from advneurons.workflow.plan import split_file

    models = [*plan.trained, *plan.external, *plan.defended]
    files = [plan.model_path(m) for m in models]
    files += [plan.pairs_path(m, a) for m in models for a in plan.attacks]
    # the splits of rule prepare_dataset (advneurons.data.SPLITS, not imported: that module imports torch, which
    # a parse of the workflow otherwise never loads)
    files += [split_file(s).format(data=plan.data_id) for s in ("train", "val", "test")]
    return files


def _word(text: str) -> str:
    """`text` as one shell word: bare when it needs no quotes (every path this workflow makes), else quoted."""
    return text if re.fullmatch(r"[A-Za-z0-9_./=+-][A-Za-z0-9_./=+~-]*", text) else shlex.quote(text)


def recovery_text(bad: list[Mismatch], options: list[str] | tuple = ()) -> str:
    """One message for every damaged file: what its record says and what is there, and the commands that
    re-make it (`options`: the run's --configfile / --config options, so the command finds the same files)."""
    extra = " ".join(_word(str(o)) for o in options)
    lines = [f"{len(bad)} file(s) this run reads no longer match the sha256 record written when they were made. "
             "No job was started and nothing was deleted.", ""]
    lines += [f"  {m.describe()}." for m in bad]
    lines += ["", "Restore each file from a backup (its record then matches again), or re-make it: delete it and ask "
              "Snakemake for it by name (a rule re-makes it and writes a new record), then run your usual command:"]
    for m in bad:
        lines.append(f"  rm {_word(m.path)}")
        lines.append(f"  .venv/bin/snakemake --cores 2 {_word(m.path)}{' ' + extra if extra else ''}")
    lines.append("A checkpoint re-trained from the same config and seed is byte-identical to the recorded one. "
                 "The steps downstream of a re-made file run again (its mtime is newer than their outputs). "
                 f"A file you replaced on purpose: delete its record (<file>{RECORD_SUFFIX}) to accept it as it is.")
    return "\n".join(lines)


def command_options(configfiles=(), config_args=()) -> list[str]:
    """The --configfile and --config options of the Snakemake command that parsed the workflow, for the recovery
    command (a model id exists only under its config); config files under the working directory, relative."""
    files = [os.path.relpath(f) if not os.path.relpath(f).startswith("..") else str(f) for f in configfiles]
    return [*(["--configfile", *files] if files else []), *(["--config", *config_args] if config_args else [])]


def check_run(plan, options: list[str] | tuple = (), cache: Path | str | None = CHECK_CACHE) -> None:
    """Raise IntegrityError naming every file of the run that differs from its record (see :func:`mismatches`)."""
    bad = mismatches(run_files(plan), cache)
    if bad:
        raise IntegrityError(recovery_text(bad, options))
