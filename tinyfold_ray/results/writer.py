"""Write one trial's Parquet files atomically, keep its earlier attempts, and list what a study has.

Each file is written under a temporary name starting with '.', which pyarrow and pandas skip, then
renamed: a crash mid-write leaves no partial file that a reader picks up. One attempt's trial and steps
files always belong together, so the trial file is the commit point of an attempt:

1. the earlier attempt's files are copied under `_attempts/` (an archived file is never replaced);
2. the new steps go to `_steps/_pending/<trial_id>.attempt<k>.parquet`, which readers skip;
3. the trial file `<study>/<trial_id>.parquet` is replaced: the attempt is now committed;
4. its pending steps are moved to `_steps/<trial_id>.parquet`.

A crash or failed write before 3 leaves the earlier attempt current and whole (its pending steps are
an orphan, overwritten by the next try); a crash between 3 and 4 is finished by the next write of the
trial or the next resume scan (`existing_trials`). So `<study>/<trial_id>.parquet` is always the latest
attempt, and no attempt's files are ever lost or paired with another attempt's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tinyfold_ray.results.schema import ATTEMPTS_DIR, SCHEMA_VERSION, STEP_SCHEMA, STEPS_DIR, TRIAL_SCHEMA
from tinyfold_ray.results.storage import atomic_write, one_line, parquet_files, resolve, set_aside

PENDING_DIR = "_pending"
"""Under `_steps/`: an attempt's steps until its trial file is written (then moved to `_steps/`)."""


def _table(rows: Sequence[dict[str, Any]], schema: pa.Schema, attempt: int) -> pa.Table:
    rows = [{**row, "schema_version": SCHEMA_VERSION, "attempt": attempt} for row in rows]
    unknown = set().union(*(r.keys() for r in rows)) - set(schema.names) if rows else set()
    assert not unknown, f"columns missing from the schema: {sorted(unknown)}"
    columns = []
    for field in schema:
        try:
            columns.append(pa.array([r.get(field.name) for r in rows], type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise type(e)(f"column {field.name!r}: {e}") from e  # pyarrow's own message names no column
    return pa.Table.from_arrays(columns, schema=schema)


def check_rows(trial_row: dict[str, Any], step_rows: Sequence[dict[str, Any]]) -> None:
    """Raise, before any file is touched, what `write_trial` would raise for the rows themselves (a
    column the schema lacks, a value of the wrong type): a fault of the rows, not of the storage."""
    _table([trial_row], TRIAL_SCHEMA, attempt=0)
    _table(step_rows, STEP_SCHEMA, attempt=0)


def trial_file_name(trial_id: str) -> str:
    return f"{trial_id}.parquet"


def attempt_file_name(trial_id: str, attempt: int) -> str:
    return f"{trial_id}.attempt{attempt}.parquet"


def write_trial(
    output: str, study: str, trial_row: dict[str, Any], step_rows: Sequence[dict[str, Any]]
) -> str:
    """Write a trial's steps, then its row (the commit), under <output>/<study>/; return the trial
    file's path.

    The row's `attempt` is one more than the attempt already committed (1 for a new trial).
    """
    fs, root = resolve(output)
    study_dir = f"{root}/{study}"
    trial_id = trial_row["trial_id"]
    attempt = _keep_previous_attempt(fs, study_dir, trial_id) + 1
    steps, trial = _table(step_rows, STEP_SCHEMA, attempt), _table([trial_row], TRIAL_SCHEMA, attempt)
    atomic_write(
        fs,
        f"{study_dir}/{STEPS_DIR}/{PENDING_DIR}",
        attempt_file_name(trial_id, attempt),
        lambda tmp: pq.write_table(steps, tmp, filesystem=fs),
    )
    path = atomic_write(
        fs, study_dir, trial_file_name(trial_id), lambda tmp: pq.write_table(trial, tmp, filesystem=fs)
    )
    _publish_steps(fs, study_dir, trial_id, attempt)
    return path


def _publish_steps(fs: pafs.FileSystem, study_dir: str, trial_id: str, attempt: int) -> None:
    """Move a committed attempt's pending steps (if still pending) to `_steps/<trial_id>.parquet`."""
    steps_dir = f"{study_dir}/{STEPS_DIR}"
    pending = f"{steps_dir}/{PENDING_DIR}/{attempt_file_name(trial_id, attempt)}"
    if fs.get_file_info(pending).type == pafs.FileType.File:
        fs.move(pending, f"{steps_dir}/{trial_file_name(trial_id)}")


def _committed_attempt(fs: pafs.FileSystem, study_dir: str, trial_id: str) -> int:
    """The attempt number in the trial's current file; 0 when it has none."""
    current = f"{study_dir}/{trial_file_name(trial_id)}"
    if fs.get_file_info(current).type != pafs.FileType.File:
        return 0
    try:
        table = pq.read_table(current, filesystem=fs)
        attempts = table["attempt"].to_pylist() if "attempt" in table.column_names else []
    except (OSError, pa.ArrowInvalid):  # unreadable: still kept, as attempt 1
        attempts = []
    return attempts[0] if attempts and attempts[0] is not None else 1  # schema 1 had no attempts


def _keep_previous_attempt(fs: pafs.FileSystem, study_dir: str, trial_id: str) -> int:
    """Copy the trial's committed files (if any) under _attempts/; return their attempt number (0: none).

    Copies, not moves: a crash before the new attempt is committed leaves the old one where it was.
    An archived file is never replaced: a retry after a failed write finds it already there.
    """
    previous = _committed_attempt(fs, study_dir, trial_id)
    if not previous:
        return 0
    # A write that stopped between its commit and moving its steps: finish it, so that the steps
    # archived below are that attempt's own.
    _publish_steps(fs, study_dir, trial_id, previous)
    kept = attempt_file_name(trial_id, previous)
    for directory in (study_dir, f"{study_dir}/{STEPS_DIR}"):
        source = f"{directory}/{trial_file_name(trial_id)}"
        target_dir = f"{directory}/{ATTEMPTS_DIR}"
        if (
            fs.get_file_info(source).type == pafs.FileType.File
            and fs.get_file_info(f"{target_dir}/{kept}").type == pafs.FileType.NotFound
        ):
            atomic_write(fs, target_dir, kept, lambda tmp, src=source: fs.copy_file(src, tmp))
    return previous


def _finish_committed_writes(fs: pafs.FileSystem, study_dir: str) -> None:
    """Move into place the pending steps of attempts whose trial file was written just before a crash.

    Pending steps of an attempt that was never committed stay where readers skip them; the next try of
    that attempt overwrites them.
    """
    for path in parquet_files(fs, f"{study_dir}/{STEPS_DIR}/{PENDING_DIR}"):
        trial_id, _, attempt = path.rsplit("/", 1)[1].removesuffix(".parquet").rpartition(".attempt")
        if attempt.isdigit() and _committed_attempt(fs, study_dir, trial_id) == int(attempt):
            _publish_steps(fs, study_dir, trial_id, int(attempt))


def existing_trials(output: str, study: str) -> dict[str, dict[str, Any]]:
    """trial_id -> the latest row already written for this study (as a dict; schema-1 rows lack the
    columns that version 2 added).

    A write that stopped between committing a trial file and moving its steps is finished first. A
    trial file that cannot be read, or an ok trial whose steps file cannot, is set aside with its
    companion (moved to `_corrupt/`, one line each on stderr) and its trial left out, so that it runs
    again.
    """
    fs, root = resolve(output)
    _finish_committed_writes(fs, f"{root}/{study}")
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
