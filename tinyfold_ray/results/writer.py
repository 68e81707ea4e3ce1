"""Write one trial's Parquet files atomically, and list the trials a study already has.

Each file is written under a temporary name starting with '.', which pyarrow and pandas skip, then
renamed: a crash mid-write leaves no partial file that a reader picks up. The steps file is written
before the trial file, so a trial row always has its steps. Finished (ok) trials are never rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tinyfold_ray.results.schema import SCHEMA_VERSION, STEP_SCHEMA, STEPS_DIR, TRIAL_SCHEMA
from tinyfold_ray.results.storage import atomic_write, one_line, parquet_files, resolve, set_aside


def _table(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    rows = [{**row, "schema_version": SCHEMA_VERSION} for row in rows]
    unknown = set().union(*(r.keys() for r in rows)) - set(schema.names) if rows else set()
    assert not unknown, f"columns missing from the schema: {sorted(unknown)}"
    columns = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.table(columns, schema=schema)


def trial_file_name(trial_id: str) -> str:
    return f"{trial_id}.parquet"


def write_trial(
    output: str, study: str, trial_row: dict[str, Any], step_rows: Sequence[dict[str, Any]]
) -> str:
    """Write a trial's steps, then its row, under <output>/<study>/; return the trial file's path."""
    fs, root = resolve(output)
    study_dir = f"{root}/{study}"
    name = trial_file_name(trial_row["trial_id"])
    steps, trial = _table(step_rows, STEP_SCHEMA), _table([trial_row], TRIAL_SCHEMA)
    atomic_write(fs, f"{study_dir}/{STEPS_DIR}", name, lambda tmp: pq.write_table(steps, tmp, filesystem=fs))
    return atomic_write(fs, study_dir, name, lambda tmp: pq.write_table(trial, tmp, filesystem=fs))


def existing_trials(output: str, study: str) -> dict[str, str]:
    """trial_id -> status of every trial row already written for this study.

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
            table = pq.read_table(path, filesystem=fs, columns=["trial_id", "status"])
            if "ok" in table["status"].to_pylist():
                reading = steps_path
                pq.read_metadata(steps_path, filesystem=fs)
        except (OSError, pa.ArrowException) as e:
            companion = steps_path if reading == path else path
            set_aside(fs, reading, f"is unreadable ({one_line(e)})")
            if fs.get_file_info(companion).type == pafs.FileType.File:
                set_aside(fs, companion, f"belongs to the same trial as the unreadable {reading}")
            continue
        for trial_id, status in zip(table["trial_id"].to_pylist(), table["status"].to_pylist()):
            found[trial_id] = status
    return found
