"""Read a study's Parquet results into pandas (no torch, no Ray).

``pd.read_parquet(study_dir)`` works on its own; `load_results` adds what a plain read cannot do: read
an output root holding several studies at once, fill columns that older schema versions lack (a setting
with the value it had before the column existed, anything else with nulls, so the summary never meets a
missing column), and say clearly when a path holds no results.
"""

from __future__ import annotations

import os
import posixpath
import sys
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tinyfold_ray.errors import ConfigError
from tinyfold_ray.results.schema import (
    ATTEMPTS_DIR,
    STEP_SCHEMA,
    STEPS_DIR,
    TRIAL_SCHEMA,
    implied_settings,
)
from tinyfold_ray.results.storage import one_line, parquet_files, resolve, visible_entries

__all__ = ["load_results"]


def load_results(path: str | os.PathLike, steps: bool = False, attempts: bool = False) -> pd.DataFrame:
    """Load the trials table (or, with ``steps=True``, the steps table) of one study or of several.

    ``path`` is a study directory (``<output>/<study>/`` with ``<trial_id>.parquet`` files in it and
    the steps in ``_steps/``) or an output root whose subdirectories are studies; a local path or a
    pyarrow-filesystem URI. Columns follow `schema.TRIAL_SCHEMA` / `schema.STEP_SCHEMA`; a setting column
    that an older file lacks holds, for every row of that file, `schema.implied_settings()` (the default
    of the time it was written), any other column it lacks is null; columns the schema does not know
    are kept.
    With ``attempts=True`` the earlier attempts of rerun trials (kept in ``_attempts/``) are included
    too; the ``attempt`` column tells them apart (`summarize` uses the latest of each trial).
    Raises `ConfigError` when the path does not exist or holds no results.
    """
    location = os.fspath(path)
    fs, base = resolve(location)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"results path {location!r} does not exist")
    if info.type != pafs.FileType.Directory:
        raise ConfigError(f"results path {location!r} is not a directory (give a study directory)")

    study_dirs = _study_dirs(fs, base)
    if not study_dirs:
        raise ConfigError(
            f"no results in {location!r}: expected <trial_id>.parquet files (a study directory) "
            "or study directories holding them"
        )
    if steps:
        study_dirs = [posixpath.join(d, STEPS_DIR) for d in study_dirs]
    if attempts:
        study_dirs = [*study_dirs, *(posixpath.join(d, ATTEMPTS_DIR) for d in study_dirs)]
    files = [f for d in study_dirs for f in parquet_files(fs, d)]
    if steps:
        if not files:
            raise ConfigError(f"no step tables in {location!r}: expected {STEPS_DIR}/*.parquet")
        sort_by = ["study", "trial_id", "attempt", "world_rank", "step"]
        schema = STEP_SCHEMA
    else:
        sort_by = ["study", "num_workers", "repeat", "trial_id", "attempt"]
        schema = TRIAL_SCHEMA

    implied = implied_settings()
    tables = [t for t in (_read_conformed(fs, f, schema, implied) for f in files) if t is not None]
    if not tables:
        raise ConfigError(f"no readable results in {location!r}: every result file was skipped")
    table = pa.concat_tables(tables, promote_options="permissive")
    df = table.to_pandas()
    if attempts:
        # An attempt can sit both current and archived (a write that failed after archiving it, until
        # the next write): the current files come first, and each attempt counts once.
        df = df.drop_duplicates([c for c in sort_by if c not in ("num_workers", "repeat")], ignore_index=True)
    return df.sort_values(sort_by, na_position="last", kind="stable", ignore_index=True)


def _study_dirs(fs: pafs.FileSystem, base: str) -> list[str]:
    """``base`` itself when it holds trial files, else its subdirectories that do."""
    if parquet_files(fs, base):
        return [base]
    subdirs = (i.path for i in visible_entries(fs, base) if i.type == pafs.FileType.Directory)
    return [d for d in subdirs if parquet_files(fs, d)]


def _read_conformed(
    fs: pafs.FileSystem, path: str, schema: pa.Schema, implied: dict[str, Any]
) -> pa.Table | None:
    """Read one part file and bring it to ``schema``: known columns cast, a missing column filled with
    its ``implied`` value (a setting the file predates) or with nulls.

    A column present with nulls keeps them: null is a value the trial recorded ("not set"), whereas a
    column the whole file lacks means the behaviour of its time, which may be a different value.

    An unreadable (corrupt, truncated) file is skipped with one line on stderr naming it: one bad
    file must not hide a whole study. The study's next run sets it aside and runs its trial again.
    """
    try:
        table = pq.read_table(path, filesystem=fs)
    except (OSError, pa.ArrowException) as exc:
        print(f"tinyfold-ray: skipping unreadable result file {path}: {one_line(exc)}", file=sys.stderr)
        return None
    columns: list[pa.ChunkedArray | pa.Array] = []
    for field in schema:
        if field.name not in table.column_names:
            value = implied.get(field.name)
            columns.append(pa.array([value] * table.num_rows, field.type))
            continue
        column = table.column(field.name)
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ConfigError(
                f"{path!r}: column {field.name!r} has type {column.type}, the schema says {field.type}"
            ) from exc
    # A pandas-written file may carry its index as a column; it is not data.
    extra = [n for n in table.column_names if n not in schema.names and not n.startswith("__index_level_")]
    columns.extend(table.column(name) for name in extra)
    return pa.table(columns, names=[*schema.names, *extra])
