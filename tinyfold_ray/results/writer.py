"""Write one trial's Parquet files atomically, keep its earlier attempts, and list what a study has.

Each file is written under a temporary name starting with '.', which pyarrow and pandas skip, then
renamed: a crash mid-write leaves no partial file that a reader picks up. The steps file is written
before the trial file, so a trial row always has its steps. A trial that runs again (a failed one, or
any with --rerun) first copies its previous files under `_attempts/`, so no attempt is ever lost and
`<study>/<trial_id>.parquet` is always the latest one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tinyfold_ray.results.schema import ATTEMPTS_DIR, SCHEMA_VERSION, STEP_SCHEMA, STEPS_DIR, TRIAL_SCHEMA
from tinyfold_ray.results.storage import atomic_write, one_line, parquet_files, resolve, set_aside


def _table(rows: Sequence[dict[str, Any]], schema: pa.Schema, attempt: int) -> pa.Table:
    rows = [{**row, "schema_version": SCHEMA_VERSION, "attempt": attempt} for row in rows]
    unknown = set().union(*(r.keys() for r in rows)) - set(schema.names) if rows else set()
    assert not unknown, f"columns missing from the schema: {sorted(unknown)}"
    columns = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.table(columns, schema=schema)


def trial_file_name(trial_id: str) -> str:
    return f"{trial_id}.parquet"


def attempt_file_name(trial_id: str, attempt: int) -> str:
    return f"{trial_id}.attempt{attempt}.parquet"


def write_trial(
    output: str, study: str, trial_row: dict[str, Any], step_rows: Sequence[dict[str, Any]]
) -> str:
    """Write a trial's steps, then its row, under <output>/<study>/; return the trial file's path.

    The row's `attempt` is one more than the attempt already on disk (1 for a new trial).
    """
    fs, root = resolve(output)
    study_dir = f"{root}/{study}"
    name = trial_file_name(trial_row["trial_id"])
    attempt = _keep_previous_attempt(fs, study_dir, trial_row["trial_id"]) + 1
    steps, trial = _table(step_rows, STEP_SCHEMA, attempt), _table([trial_row], TRIAL_SCHEMA, attempt)
    atomic_write(fs, f"{study_dir}/{STEPS_DIR}", name, lambda tmp: pq.write_table(steps, tmp, filesystem=fs))
    return atomic_write(fs, study_dir, name, lambda tmp: pq.write_table(trial, tmp, filesystem=fs))


def _keep_previous_attempt(fs: pafs.FileSystem, study_dir: str, trial_id: str) -> int:
    """Copy the trial's current files (if any) under _attempts/; return their attempt number (0: none).

    Copies, not moves: a crash before the new attempt is written leaves the old one where it was.
    """
    current = f"{study_dir}/{trial_file_name(trial_id)}"
    if fs.get_file_info(current).type != pafs.FileType.File:
        return 0
    try:
        table = pq.read_table(current, filesystem=fs)
        attempts = table["attempt"].to_pylist() if "attempt" in table.column_names else []
    except (OSError, pa.ArrowInvalid):  # unreadable: still kept, as attempt 1
        attempts = []
    previous = attempts[0] if attempts and attempts[0] is not None else 1  # schema 1 had no attempts
    kept = attempt_file_name(trial_id, previous)
    for directory in (study_dir, f"{study_dir}/{STEPS_DIR}"):
        source = f"{directory}/{trial_file_name(trial_id)}"
        if fs.get_file_info(source).type == pafs.FileType.File:
            atomic_write(
                fs, f"{directory}/{ATTEMPTS_DIR}", kept, lambda tmp, src=source: fs.copy_file(src, tmp)
            )
    return previous


def existing_trials(output: str, study: str) -> dict[str, dict[str, Any]]:
    """trial_id -> the latest row already written for this study (as a dict; schema-1 rows lack the
    columns that version 2 added).

    A trial file that cannot be read, or an ok trial whose steps file cannot, is set aside with its
    companion (moved to `_corrupt/`, one line each on stderr) and its trial left out, so that it runs
    again.
    """
    fs, root = resolve(output)
    found = {}
    for path in parquet_files(fs, f"{root}/{study}"):
        directory, name = path.rsplit("/", 1)
        steps_path = f"{directory}/{STEPS_DIR}/{name}"
        reading = path
        try:
            rows = pq.read_table(path, filesystem=fs).to_pylist()
            if any(row["status"] == "ok" for row in rows):
                reading = steps_path
                pq.read_metadata(steps_path, filesystem=fs)
        except (OSError, pa.ArrowException) as e:
            companion = steps_path if reading == path else path
            set_aside(fs, reading, f"is unreadable ({one_line(e)})")
            if fs.get_file_info(companion).type == pafs.FileType.File:
                set_aside(fs, companion, f"belongs to the same trial as the unreadable {reading}")
            continue
        for row in rows:
            found[row["trial_id"]] = row
    return found
