"""The trial writer: atomic files, readable with plain pandas, finished trials listed for resume."""

import itertools
import shutil
from datetime import datetime, timezone

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tinyfold_ray.results import load_results, safe_write, writer
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


def _step(trial_id, loss=1.0, step=0):
    return {
        "study": "s",
        "trial_id": trial_id,
        "world_rank": 0,
        "step": step,
        "step_time_s": 0.5,
        "loss": loss,
    }


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


def test_an_attempt_both_current_and_archived_loads_once(tmp_path):
    # A write that failed after archiving (or a crash there) leaves the current attempt also under
    # _attempts/ until the next write: counted twice, it would weigh twice in a summary.
    write_trial(str(tmp_path), "s", _row("a"), [_step("a"), _step("a", step=1)])
    study = tmp_path / "s"
    (study / "_attempts").mkdir()
    (study / "_steps" / "_attempts").mkdir()
    shutil.copy(study / "a.parquet", study / "_attempts" / writer.attempt_file_name("a", 1))
    shutil.copy(
        study / "_steps" / "a.parquet", study / "_steps" / "_attempts" / writer.attempt_file_name("a", 1)
    )
    assert list(load_results(study, attempts=True).attempt) == [1]
    assert list(load_results(study, steps=True, attempts=True).step) == [0, 1]


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


# --- an attempt's trial and steps files belong together, whatever fails or crashes ---------------------


def _attempt(marker):
    """A trial row and its steps, all marked with `marker`, so that a file shows which write it came from."""
    return {**_row("a"), "final_loss": marker}, [_step("a", loss=marker, step=i) for i in range(2)]


def _pairs(study_dir):
    """{where: (trial attempt, trial marker, steps attempts, steps markers)} for the current files and each
    archived attempt; the steps part is None where that steps file is missing."""
    places = {"current": (study_dir / "a.parquet", study_dir / "_steps" / "a.parquet")}
    for archived in sorted((study_dir / "_attempts").glob("a.attempt*.parquet")):
        places[archived.name] = (archived, study_dir / "_steps" / "_attempts" / archived.name)
    found = {}
    for where, (trial_file, steps_file) in places.items():
        trial = pd.read_parquet(trial_file)
        steps = pd.read_parquet(steps_file) if steps_file.exists() else None
        found[where] = (
            trial.attempt.item(),
            trial.final_loss.item(),
            None if steps is None else sorted(set(steps.attempt)),
            None if steps is None else sorted(set(steps.loss)),
        )
    return found


def _assert_each_attempt_whole(study_dir):
    pairs = _pairs(study_dir)
    for where, (attempt, marker, step_attempts, step_markers) in pairs.items():
        if step_attempts is None:  # a crash while archiving the attempt that is still the current one
            assert where != "current" and pairs["current"][:2] == (attempt, marker), f"{where} has no steps"
        else:
            assert (step_attempts, step_markers) == ([attempt], [marker]), f"{where} mixes two attempts"


def test_a_retry_after_the_trial_file_failed_keeps_each_attempt_with_its_own_steps(tmp_path, monkeypatch):
    write_trial(str(tmp_path), "s", *_attempt(1.0))
    real_write = writer.pq.write_table
    written = []

    def trial_file_fails_once(table, where, **kwargs):
        is_trial_file = "/_steps/" not in where
        if is_trial_file and not any(w == "trial file failed" for w in written):
            written.append("trial file failed")
            raise OSError("Connection reset by peer")
        written.append("trial file" if is_trial_file else "steps")
        return real_write(table, where, **kwargs)

    monkeypatch.setattr(writer.pq, "write_table", trial_file_fails_once)
    path, fallback = safe_write.store_trial(str(tmp_path), "s", *_attempt(2.0), sleep=lambda s: None)
    assert written == ["steps", "trial file failed", "steps", "trial file"]
    assert (path, fallback) == (f"{tmp_path}/s/a.parquet", None)

    study = tmp_path / "s"
    assert _pairs(study) == {"current": (2, 2.0, [2], [2.0]), "a.attempt1.parquet": (1, 1.0, [1], [1.0])}
    steps = load_results(study, steps=True, attempts=True)
    assert sorted(set(zip(steps.attempt, steps.loss))) == [(1, 1.0), (2, 2.0)]
    assert list(pd.read_parquet(study / "_steps").loss) == [2.0, 2.0]


class _CrashingFilesystem(pafs.FSSpecHandler):
    """The local filesystem of a process that dies before its `budget`-th change: that change and every
    later one fail (the temporary files it leaves behind stay, as after a real crash)."""

    def __init__(self, budget):
        super().__init__(fsspec.filesystem("file"))
        self.budget = budget
        self.changes = 0

    def _change(self):
        if self.changes >= self.budget:
            raise OSError("the process died")
        self.changes += 1

    def create_dir(self, path, recursive):
        self._change()
        return super().create_dir(path, recursive)

    def delete_file(self, path):
        self._change()
        return super().delete_file(path)

    def move(self, src, dest):
        self._change()
        return super().move(src, dest)

    def copy_file(self, src, dest):
        self._change()
        return super().copy_file(src, dest)

    def open_output_stream(self, path, metadata):
        self._change()
        return super().open_output_stream(path, metadata)


def _write_through(monkeypatch, handler, root, rows):
    with monkeypatch.context() as patch:
        patch.setattr(writer, "resolve", lambda output: (pafs.PyFileSystem(handler), output))
        write_trial(str(root), "s", *rows)


def test_a_crash_at_any_point_of_a_rewrite_leaves_every_attempt_whole(tmp_path, monkeypatch):
    full = _CrashingFilesystem(budget=10**6)
    write_trial(str(tmp_path / "count"), "s", *_attempt(1.0))
    _write_through(monkeypatch, full, tmp_path / "count", _attempt(2.0))
    assert full.changes >= 6  # two archive copies, the steps, the trial file, moving the steps

    for crash_at, scan_first in itertools.product(range(full.changes), (True, False)):
        root = tmp_path / f"crash{crash_at}-{scan_first}"
        write_trial(str(root), "s", *_attempt(1.0))
        with pytest.raises(OSError, match="the process died"):
            _write_through(monkeypatch, _CrashingFilesystem(crash_at), root, _attempt(2.0))
        if scan_first:  # the study's next run; without it, the rerun of the trial itself finishes the write
            existing_trials(str(root), "s")
            _assert_each_attempt_whole(root / "s")
            assert (1, 1.0, [1], [1.0]) in _pairs(root / "s").values(), f"attempt 1 lost at change {crash_at}"
            assert list(pd.read_parquet(root / "s").trial_id) == ["a"]

        write_trial(str(root), "s", *_attempt(3.0))  # the rerun after the crash
        _assert_each_attempt_whole(root / "s")
        pairs = _pairs(root / "s")
        assert pairs["current"][1] == 3.0 and pairs["a.attempt1.parquet"] == (1, 1.0, [1], [1.0])


def test_a_half_write_left_by_an_older_version_does_not_replace_the_archived_steps(tmp_path):
    # The state the writer before the commit-point design left when a trial file failed after its steps:
    # attempt 1 archived whole, the current trial file still attempt 1, the current steps attempt 2's.
    write_trial(str(tmp_path), "s", *_attempt(1.0))
    study = tmp_path / "s"
    for directory in (study, study / "_steps"):
        (directory / "_attempts").mkdir()
        (directory / "_attempts" / "a.attempt1.parquet").write_bytes((directory / "a.parquet").read_bytes())
    orphan = [{**step, "attempt": 2} for step in _attempt(2.0)[1]]
    pq.write_table(pa.Table.from_pylist(orphan), study / "_steps" / "a.parquet")

    write_trial(str(tmp_path), "s", *_attempt(2.0))
    assert _pairs(study) == {"current": (2, 2.0, [2], [2.0]), "a.attempt1.parquet": (1, 1.0, [1], [1.0])}
