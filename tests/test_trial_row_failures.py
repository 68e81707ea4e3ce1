"""A fault after training (building the trial row, storing it) still ends as a failed row with its reason.

No Ray: the placement check and the fit are replaced, so run_trial goes straight to building and storing.
"""

import pandas as pd
import pytest

from tinyfold_ray.config import TrialSpec
from tinyfold_ray.errors import StorageError
from tinyfold_ray.results import safe_write
from tinyfold_ray.results.writer import write_trial
from tinyfold_ray.train import trial

SPEC = TrialSpec(study="unit", trial_id="w1-r0", num_workers=1)


@pytest.fixture
def fitted(monkeypatch):
    """Make run_trial's fit return the records the test sets (`fitted.append(...)`)."""
    records = []
    monkeypatch.setattr(trial, "alive_nodes", lambda: [])
    monkeypatch.setattr(trial, "check_placement", lambda spec, nodes, reserved: (False, None))
    monkeypatch.setattr(trial, "_fit", lambda *args, **kwargs: ([records], None))  # one trial, no error
    return records


def _stored(tmp_path):
    return pd.read_parquet(tmp_path / SPEC.study).to_dict("records")


def test_a_record_that_lacks_a_figure_gives_a_failed_row_naming_the_phase(tmp_path, fitted):
    fitted.append({"world_rank": 0})  # a worker's record without its figures
    outcome = trial.run_trial(SPEC, str(tmp_path), fallback_root=str(tmp_path / "fallback"))
    assert not outcome.ok and outcome.fallback is None
    assert outcome.row["error"].startswith("building the trial row: KeyError: '"), outcome.row["error"]
    [row] = _stored(tmp_path)
    assert (row["trial_id"], row["status"], row["error"]) == (SPEC.trial_id, "failed", outcome.row["error"])
    assert pd.read_parquet(tmp_path / SPEC.study / "_steps").empty


def test_a_row_the_writer_refuses_gives_a_failed_row_without_retries_or_fallback(
    tmp_path, fitted, monkeypatch
):
    real_build = trial.build_outcome

    def with_a_wrongly_typed_figure(*args, **kwargs):
        outcome = real_build(*args, **kwargs)
        if outcome.ok:
            outcome.row["num_nodes"] = "two"  # an int64 column
        return outcome

    writes = []

    def counted_write(*args):
        writes.append(args[2]["status"])
        return write_trial(*args)

    monkeypatch.setattr(trial, "build_outcome", with_a_wrongly_typed_figure)
    monkeypatch.setattr(safe_write, "write_trial", counted_write)
    monkeypatch.setattr(safe_write, "RETRY_DELAYS_S", ())
    outcome = trial.run_trial(SPEC, str(tmp_path), fallback_root=str(tmp_path / "fallback"))
    assert outcome.row["error"].startswith("storing the trial row: ArrowInvalid: column 'num_nodes': ")
    assert "'two'" in outcome.row["error"]
    assert writes == ["failed"]  # the refused row was neither written, nor retried, nor sent to the fallback
    assert (outcome.path, outcome.fallback) == (f"{tmp_path}/unit/w1-r0.parquet", None)
    [row] = _stored(tmp_path)
    assert (row["status"], row["error"]) == ("failed", outcome.row["error"])
    assert not (tmp_path / "fallback").exists()


def test_rows_that_no_location_takes_raise_one_line_for_the_caller_to_report(tmp_path, fitted, monkeypatch):
    (tmp_path / "a-file").write_text("not a directory")
    monkeypatch.setattr(safe_write, "RETRY_DELAYS_S", ())
    with pytest.raises(StorageError, match="cannot write .* nor the fallback") as info:
        trial.run_trial(SPEC, str(tmp_path / "a-file" / "out"), fallback_root=str(tmp_path / "a-file" / "fb"))
    assert "\n" not in str(info.value)
