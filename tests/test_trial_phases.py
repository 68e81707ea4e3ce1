"""Where a trial's wall time goes: the phase columns of its row, and the study's measured share. No Ray."""

from datetime import datetime, timezone

import pandas as pd
import pytest

from tests.test_measurement import _record
from tinyfold_ray.config import TrainConfig, TrialSpec
from tinyfold_ray.results.schema import PHASE_COLUMNS, TRIAL_COLUMNS
from tinyfold_ray.results.tables import phase_tables
from tinyfold_ray.study.runner import StudyReport
from tinyfold_ray.train import trial
from tinyfold_ray.train.trial import build_outcome

PARTS = ("reference_s", "probe_s", "overhead_other_s")
WALL_S = 10.0
STEP_S = 0.5  # every measured step of every rank (_record)
# When each rank began each phase, in seconds after the driver's start; the slowest differs by phase.
BEGAN = [
    {
        "build": 2.0,
        "warmup": 2.5,
        "measured": 3.0,
        "reference": 7.2,
        "profile": 7.3,
        "probe": 7.3,
        "teardown": 7.6,
    },
    {
        "build": 2.2,
        "warmup": 2.4,
        "measured": 3.1,
        "reference": 7.25,
        "profile": 7.5,
        "probe": 7.5,
        "teardown": 7.7,
    },
]


def _timed_outcome(began, *, error=None, steps=8, compile="none"):
    start = datetime.now(timezone.utc)
    records = [
        {
            **_record(rank, losses=[1.0] * steps, reference=0.3, common_loss=2.0),
            "times": {phase: start.timestamp() + s for phase, s in offsets.items()},
        }
        for rank, offsets in enumerate(began)
    ]
    train = TrainConfig(num_steps=steps, batch_size=2, warmup_steps=2, compile=compile)
    spec = TrialSpec(num_workers=len(began), train=train)
    return build_outcome(spec, records, error, False, start, start, WALL_S, None)


def test_each_phase_ends_when_its_slowest_rank_begins_the_next_and_they_add_up_to_the_wall_time():
    outcome = _timed_outcome(BEGAN)
    row = outcome.row
    expected = {
        "startup_s": 2.2,  # the last rank entered the train function
        "build_s": 2.5 - 2.2,
        "warmup_s": 3.1 - 2.5,
        "measured_s": 7.25 - 3.1,
        "after_measure_s": 7.7 - 7.25,
        "teardown_s": WALL_S - 7.7,
        "reference_s": 7.5 - 7.25,
        "probe_s": 7.7 - 7.5,
        "overhead_other_s": (7.25 - 3.1) - 8 * STEP_S,
    }
    assert {k: row[k] for k in expected} == pytest.approx(expected)
    assert sum(row[k] for k in PHASE_COLUMNS) == pytest.approx(row["wall_time_s"])
    # overhead_s is the named parts outside the measured steps plus the small remainder.
    outside = sum(row[k] for k in PHASE_COLUMNS if k != "measured_s")
    assert row["overhead_s"] == pytest.approx(outside + row["overhead_other_s"])
    assert outcome.phases_s == {k: row[k] for k in PHASE_COLUMNS}
    assert set(expected) <= set(TRIAL_COLUMNS)


def test_a_compiled_trial_records_what_its_warm_up_spent_beyond_a_normal_step():
    # Two warm-up steps took 1.6 s on the slowest rank; a measured step takes STEP_S.
    slow = [{**b, "measured": b["warmup"] + 1.6} for b in BEGAN]
    assert _timed_outcome(slow, compile="default").row["compile_time_s"] == pytest.approx(1.6 - 2 * STEP_S)
    assert _timed_outcome(slow).row["compile_time_s"] is None  # eager: nothing compiled
    # A warm compile cache: the warm-up as fast as its steps, noise below that reads 0, never negative.
    assert _timed_outcome(BEGAN, compile="default").row["compile_time_s"] == 0.0


def test_a_graphed_step_has_no_breakdown_parts_never_zeros():
    start = datetime.now(timezone.utc)
    records = [_record(0, losses=[1.0] * 4, reference=None, common_loss=None)]
    train = TrainConfig(num_steps=4, batch_size=2, warmup_steps=4, cuda_graph=True)
    outcome = build_outcome(
        TrialSpec(device="cuda", train=train), records, None, True, start, start, 5.0, None
    )
    parts = ("compute_time_median_s", "comm_exposed_median_s", "optimizer_time_median_s")
    assert all(outcome.row[k] is None for k in parts)
    assert all(r[k] is None for r in outcome.step_rows for k in trial.STEP_PARTS)
    assert outcome.row["throughput_samples_per_sec"] > 0


def test_a_failed_trial_has_no_phase_figures(tmp_path, monkeypatch):
    assert not _timed_outcome(BEGAN, error="RuntimeError: boom").phases_s
    # Stored: null, never 0.
    monkeypatch.setattr(trial, "alive_nodes", lambda: [])
    monkeypatch.setattr(trial, "check_placement", lambda spec, nodes, reserved: (False, "no room"))
    spec = TrialSpec(study="unit", trial_id="w1-r0", num_workers=1)
    outcome = trial.run_trial(spec, str(tmp_path), fallback_root=str(tmp_path / "fallback"))
    assert not outcome.ok
    [row] = pd.read_parquet(tmp_path / "unit").to_dict("records")
    assert all(pd.isna(row[k]) for k in (*PHASE_COLUMNS, *PARTS)), row
    assert row["wall_time_s"] > 0


def test_the_closing_line_gives_the_measured_steps_share_of_the_trials_wall_time():
    report = StudyReport(location="x", planned=3, skipped=1, trials_wall_s=40.0, measured_s=3.0)
    assert report.measured_share_line() == (
        "measured steps 7.5% of the study's time (3.0 s of 40.0 s, the wall time of the trials run)"
    )
    assert StudyReport(location="x", planned=1, skipped=1).measured_share_line() is None


def _trials(study, num_workers, wall, overhead, phases, attempt=1):
    return {
        "study": study,
        "trial_id": f"w{num_workers}-{wall}",
        "attempt": attempt,
        "num_workers": num_workers,
        "wall_time_s": wall,
        "overhead_s": overhead,
        **dict(zip(PHASE_COLUMNS, phases)),
    }


def test_the_report_splits_each_study_s_wall_time_by_phase_per_worker_count():
    rows = [
        _trials("s", 1, 10.0, 9.0, [6.0, 1.0, 0.5, 1.0, 0.5, 1.0]),
        _trials("s", 1, 20.0, 17.0, [14.0, 1.0, 0.5, 3.0, 0.5, 1.0]),
        _trials("s", 2, 12.0, 10.0, [7.0, 1.0, 0.5, 2.0, 0.5, 1.0]),
        # A failed trial: no phases, left out.
        {**_trials("s", 2, 3.0, None, [None] * 6), "trial_id": "w2-failed"},
    ]
    [table] = phase_tables(pd.DataFrame(rows))
    assert table.title.startswith("s: ")
    assert [r[:4] for r in table.rows] == [["1", "2", "15.00", "10.00"], ["2", "1", "12.00", "7.00"]]
    # The measured steps' share: (1 + 3) / (10 + 20) and 2 / 12 of the wall time.
    assert [r[-1] for r in table.rows] == ["13.3 %", "16.7 %"]
    # Results written before the phase columns: no table, no error.
    assert phase_tables(pd.DataFrame(rows).drop(columns=list(PHASE_COLUMNS))) == []


def test_the_phase_figure_stacks_each_phase_mean_and_is_left_out_without_phases():
    pytest.importorskip("matplotlib")
    from tests.test_summary import frame, repeats
    from tinyfold_ray.results.plots import render_plots
    from tinyfold_ray.results.summary import summarize
    from tinyfold_ray.results.tables import phase_means

    trials = frame(repeats([10, 12], num_workers=1) + repeats([19, 21], num_workers=2))
    phases = [6.0, 1.0, 0.5, 1.0, 0.5, 1.0]
    trials[list(PHASE_COLUMNS)] = phases
    trials["wall_time_s"], trials["overhead_s"] = sum(phases), sum(phases) - 0.9
    means = phase_means(trials)
    assert list(means.index.get_level_values("num_workers")) == [1, 2]
    assert means["steps_s"].tolist() == pytest.approx([0.9, 0.9])
    assert means["share"].tolist() == pytest.approx([0.9 / 10, 0.9 / 10])

    summary = summarize(trials)
    assert "phases.png" in render_plots(summary, dpi=30, trials=trials)
    assert "phases.png" not in render_plots(summary, dpi=30)
    assert "phases.png" not in render_plots(summary, dpi=30, trials=trials.drop(columns=list(PHASE_COLUMNS)))
