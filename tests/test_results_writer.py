"""The trial writer: atomic files, readable with plain pandas, finished trials listed for resume."""

from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tinyfold_ray.results import load_results, writer
from tinyfold_ray.results.schema import SCHEMA_VERSION
from tinyfold_ray.results.writer import existing_trials, write_trial


def _row(trial_id, status="ok"):
    now = datetime.now(timezone.utc)
    return {
        "study": "s",
        "trial_id": trial_id,
        "repeat": 0,
        "status": status,
        "num_workers": 1,
        "start_time": now,
    }


def _step(trial_id):
    return {"study": "s", "trial_id": trial_id, "world_rank": 0, "step": 0, "step_time_s": 0.5, "loss": 1.0}


def test_written_trials_read_back_with_plain_pandas(tmp_path):
    write_trial(str(tmp_path), "s", _row("a"), [_step("a")])
    write_trial(str(tmp_path), "s", _row("b", "failed"), [])
    trials = pd.read_parquet(tmp_path / "s")
    assert sorted(trials.trial_id) == ["a", "b"]
    assert trials.schema_version.eq(SCHEMA_VERSION).all() and trials.attempt.eq(1).all()
    assert {k: row["status"] for k, row in existing_trials(str(tmp_path), "s").items()} == {
        "a": "ok",
        "b": "failed",
    }
    assert existing_trials(str(tmp_path), "other") == {}


def test_a_rerun_keeps_every_earlier_attempt_and_the_study_reads_one_row_per_trial(tmp_path):
    write_trial(str(tmp_path), "s", _row("a", "failed"), [])
    write_trial(str(tmp_path), "s", _row("a", "failed"), [_step("a")])
    write_trial(str(tmp_path), "s", _row("a"), [_step("a")])
    latest = pd.read_parquet(tmp_path / "s")
    assert list(zip(latest.trial_id, latest.attempt, latest.status)) == [("a", 3, "ok")]
    older = pd.read_parquet(tmp_path / "s" / "_attempts").sort_values("attempt")
    assert list(zip(older.attempt, older.status)) == [(1, "failed"), (2, "failed")]
    assert list(pd.read_parquet(tmp_path / "s" / "_steps" / "_attempts").attempt) == [2]
    everything = load_results(tmp_path / "s", attempts=True)
    assert sorted(everything.attempt) == [1, 2, 3]
    assert list(pd.read_parquet(tmp_path / "s" / "_steps").attempt) == [3]


def test_a_schema_1_file_rerun_becomes_attempt_1(tmp_path):
    (tmp_path / "s").mkdir()
    pq.write_table(
        pa.Table.from_pylist([{"study": "s", "trial_id": "a", "status": "failed"}]),
        tmp_path / "s" / "a.parquet",
    )
    write_trial(str(tmp_path), "s", _row("a"), [])
    assert pd.read_parquet(tmp_path / "s" / "_attempts" / "a.attempt1.parquet").status.tolist() == ["failed"]
    assert pd.read_parquet(tmp_path / "s").attempt.tolist() == [2]


def test_a_crash_between_write_and_rename_leaves_nothing_a_reader_picks_up(tmp_path, monkeypatch):
    write_trial(str(tmp_path), "s", _row("done"), [_step("done")])

    real_write = writer.pq.write_table

    def write_then_crash(*args, **kwargs):
        real_write(*args, **kwargs)  # the temporary file is complete; the rename never happens
        raise OSError("power cut")

    monkeypatch.setattr(writer.pq, "write_table", write_then_crash)
    with pytest.raises(OSError, match="power cut"):
        write_trial(str(tmp_path), "s", _row("half"), [_step("half")])
    monkeypatch.undo()

    assert list(pd.read_parquet(tmp_path / "s").trial_id) == ["done"]
    assert list(existing_trials(str(tmp_path), "s")) == ["done"]
    leftovers = [p.name for p in (tmp_path / "s").rglob("*") if p.is_file() and "half" in p.name]
    assert leftovers == []  # the temporary file was cleaned up too


def test_a_file_uri_works_like_a_path(tmp_path):
    write_trial(f"file://{tmp_path}", "s", _row("a"), [_step("a")])
    assert list(pd.read_parquet(tmp_path / "s").trial_id) == ["a"]


def test_unknown_columns_are_a_bug_not_silently_dropped(tmp_path):
    with pytest.raises(AssertionError, match="not_a_column"):
        write_trial(str(tmp_path), "s", {**_row("a"), "not_a_column": 1}, [])
    assert writer.trial_file_name("x") == "x.parquet"
