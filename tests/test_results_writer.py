"""The trial writer: atomic files, readable with plain pandas, finished trials listed for resume."""

from datetime import datetime, timezone

import pandas as pd
import pytest

from tinyfold_ray.results import writer
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
    assert trials.schema_version.eq(1).all()
    assert existing_trials(str(tmp_path), "s") == {"a": "ok", "b": "failed"}
    assert existing_trials(str(tmp_path), "other") == {}


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
    assert existing_trials(str(tmp_path), "s") == {"done": "ok"}
    leftovers = [p.name for p in (tmp_path / "s").rglob("*") if p.is_file() and "half" in p.name]
    assert leftovers == []  # the temporary file was cleaned up too


def test_a_file_uri_works_like_a_path(tmp_path):
    write_trial(f"file://{tmp_path}", "s", _row("a"), [_step("a")])
    assert list(pd.read_parquet(tmp_path / "s").trial_id) == ["a"]


def test_unknown_columns_are_a_bug_not_silently_dropped(tmp_path):
    with pytest.raises(AssertionError, match="not_a_column"):
        write_trial(str(tmp_path), "s", {**_row("a"), "not_a_column": 1}, [])
    assert writer.trial_file_name("x") == "x.parquet"
